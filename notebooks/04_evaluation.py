# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 04 · Evaluation: did the adapter make the answers better — and better than what?
#
# **What you will learn**
#
# - how `tunebook.evaluation.run_evaluation` compares the **base** model with **base + adapter** on
#   the held-out test split, with the same prompts as training, and why every number comes with the
#   number of rows it was measured on;
# - why a **simple baseline** belongs beside them (here a gazetteer: the entity strings seen in
#   training, looked up in the test sentence), and what it means when the tuned model does not
#   beat it;
# - the extraction metrics: entity **precision / recall / F1** (micro and per type), the rate of
#   **valid JSON** and **exact match**;
# - **error analysis**: which kinds of mistakes remain, as a picture and with examples;
# - **perplexity**, and why a lower loss is not the same as better answers;
# - the metrics for free-text answers: **exact match, token F1, ROUGE-L**.
#
# **Time**: 11 minutes on a quiet 2-core CPU (measured): 150 test sentences answered twice, then
# the exercises, whose two 60-step runs take half of it.
# **Needs**: 02's adapter (a short one is trained here if it is missing).

# %% tags=["parameters"]
SMOKE = False  # True: 4 test examples, 16 new tokens, and a 2-step adapter if 02 has not been run

# %%
# Setup: work from the repository root (config paths such as data/extraction are relative to it),
# and hide library warnings and progress bars so the outputs stay readable.
from pathlib import Path

from tunebook.notebook import use_repo_root

ROOT = use_repo_root()

# %% [markdown]
# ## The adapter to evaluate
#
# This notebook evaluates the adapter that 02 trained (`runs/smollm2-lora/adapter`). **If that folder
# does not exist yet, the next cell first trains a short adapter** (60 steps; 2 in smoke mode) into
# `runs/smollm2-lora-short`, so that the notebook runs on its own. Its scores are lower than those of
# the full run: run 02 first for the real numbers.

# %%
from tunebook.notebook import ensure_adapter, notebook_config

config = notebook_config("configs/smollm2-135m-instruct/lora.yaml", SMOKE)
adapter_dir = ensure_adapter(config, 2 if SMOKE else 60)

# %% [markdown]
# ## 1. Base, baseline and tuned on the test split
#
# `run_evaluation` loads the model once, evaluates the base model, then attaches the adapter to the
# same object and evaluates again: greedy generation for every test sentence (batched by length,
# left-padded), parsing each answer as JSON, and scoring it against the reference. Beside them it
# scores the **baselines** on exactly the same rows, fitted on the rows the model trained on, in
# seconds. It writes `results.json` (every metric with its row count) and `predictions.jsonl` (one
# line per test row, with its line in the test file) to the run's `eval/` folder.
#
# Why a baseline? A fine-tuned model is worth training, serving and maintaining only if it beats
# what a few lines of classical code reach. On the real SMS Spam Collection, a LoRA-tuned encoder
# once scored macro-F1 0.947 and looked like a success next to its untrained base (0.52) — until a
# TF-IDF + logistic regression, trained in a second, scored 0.971 (06 measures it). The table
# marks the strongest baseline and warns when the tuned model does not beat it.

# %%
from tunebook.evaluation import run_evaluation

summary = run_evaluation(config, adapter_dir=str(adapter_dir), overwrite=True)
EVAL_DIR = Path(config.train.output_dir) / "eval"

# %% [markdown]
# The same numbers as a table (`delta` = tuned − base), with the row count of each column:

# %%
import pandas as pd

KEYS = ["f1", "precision", "recall", "valid_json_rate", "exact_match", "num_examples"]
columns = {"base": summary["base"], **{f"baseline: {n}": b for n, b in summary["baselines"].items()},
           "tuned": summary["tuned"]}
table = pd.DataFrame({name: {key: result.get(key) for key in KEYS} for name, result in columns.items()})
table.loc["f1":"exact_match", "delta"] = table.loc["f1":"exact_match", "tuned"] - table.loc["f1":"exact_match", "base"]
print(f"best baseline: {summary['best_baseline']}; tuned beats it: {summary['tuned_beats_baseline']}")
table.round(3)

# %% [markdown]
# **Generated sentences are easy.** The extraction data here is generated: uniform sentences, names
# that recur. On real text the same recipe scores far lower; expect something nearer the real-data
# rows on your own data. Measured with the same model, LoRA shape and prompt (README, "Results"):
#
# | data | test rows | entity F1 (tuned) | gazetteer | training |
# |---|---|---|---|---|
# | `data/extraction`, generated (`lora.yaml`) | 150 | 0.955 | 0.595 | 150 steps |
# | `data/wikigold`, real Wikipedia text (`wikigold.yaml`, shipped) | 170 | 0.654 | 0.252 | 220 steps |
# | CoNLL-2003 newswire (not shipped; a user's copy of `lora.yaml`) | first 200 of 3,327 | 0.747 | 0.507 | 400 steps |

# %% [markdown]
# What each number means:
#
# - **precision**: of the entities the model wrote, the share that are in the reference (right text
#   *and* right type); **recall**: of the reference entities, the share the model found; **F1**:
#   their harmonic mean. Micro-averaged: every entity of every sentence counts once.
# - **valid_json_rate**: the share of answers that parse as a JSON object of lists of strings. An
#   invalid answer finds nothing.
# - **exact_match**: the share of sentences whose entity set is exactly right — the strictest view.
# - **num_examples**: the test rows each column was scored on; the baseline's are the model's rows.
#
# The gazetteer finds the names it has seen, with their most frequent type; it cannot find names it
# has never seen (half of this test set's names never occur in training, by design) and cannot tell
# "Bank of Lisbon" the organization from "Lisbon" the place by context. What the tuned model adds
# over it is exactly that: copying unseen spans and reading the context.
#
# ## 2. Per entity type

# %%
from tunebook.plots import plot_grouped_bars

best = summary["best_baseline"]
per_type = {name: {t: v["f1"] for t, v in result["per_type"].items()}
            for name, result in (("base", summary["base"]), (f"baseline: {best}", summary["baselines"][best]),
                                 ("tuned", summary["tuned"]))}
support = {t: v["support"] for t, v in summary["tuned"]["per_type"].items()}
print("reference entities per type (support):", support)
plot_grouped_bars(per_type, EVAL_DIR / "per_type_f1.png", title=f"F1 per entity type ({summary['num_examples']} test rows)",
                  ylabel="F1")

# %% [markdown]
# Compare the types with each other and with the error analysis below: a type whose lists the model
# tends to leave empty scores low however well it copies names. Organisations are the hardest in
# principle: long, they contain places ("Bank of Lisbon" is one organization, not a location).
#
# ## 3. Error analysis
#
# Every wrong answer gets one or more categories (`tunebook.metrics.entity_f1.categorize_errors`):
#
# | category | meaning |
# |---|---|
# | `invalid_json` | the answer does not parse (nothing else is comparable) |
# | `missing_entity` | a reference entity is not in the answer |
# | `invented_entity` | the answer has an entity that is not in the reference |
# | `wrong_type` | the right text under the wrong type (a company listed as a location) |
# | `boundary` | an overlapping but different span ("Lovelace" for "Ada Lovelace") |

# %%
errors = {name: {c: n for c, n in summary[name]["error_counts"].items() if c != "correct"} for name in ("base", "tuned")}
print({name: summary[name]["error_counts"]["correct"] for name in ("base", "tuned")}, "answers fully correct")
plot_grouped_bars(errors, EVAL_DIR / "error_categories.png", title="Answers with each kind of error",
                  ylabel="answers", value_format="{:.0f}")

# %%
for category, examples in summary["tuned"]["error_examples"].items():
    example = examples[0]
    print(f"[{category}]\n  sentence:   {example['input']}\n  reference:  {example['reference']}\n  prediction: {example['prediction']}\n")

# %% [markdown]
# The base model's mistakes are all of the first kind: it answers in a format of its own, so
# nothing can be compared. Read the tuned model's remaining mistakes by category — a missed entity
# lowers recall, an invented or wrongly typed one lowers precision. Every prediction (base, tuned,
# the best baseline) is in `predictions.jsonl`, with `row`, the line of the test file:

# %%
predictions = pd.read_json(EVAL_DIR / "predictions.jsonl", lines=True)
predictions[["row", "input", "reference", "tuned_output", "baseline_output", "tuned_errors"]].head(5)

# %% [markdown]
# ## 4. Loss vs task metric
#
# Perplexity (exp of the mean loss per answer token, on the validation split) and F1 usually move
# together, but they measure different things. Perplexity averages over every reference token, most
# of them the fixed JSON keys and punctuation, which the tuned model predicts with near certainty;
# F1 only cares whether the few entity tokens are right. A model can lower its perplexity by getting
# the format perfect while still missing entities: this job at learning rate 2e-4 reached
# perplexity 1.11, yet recall 0.12, because it left most lists empty (exercise 2 reproduces it).

# %%
print({name: round(summary[name]["perplexity"], 3) for name in ("base", "tuned")},
      f"over {summary['tuned']['perplexity_rows']} validation rows")

# %% [markdown]
# ## 5. Metrics for free-text answers
#
# Answers to the Nimbus Support questions (`data/instructions`, trained by
# `configs/smollm2-135m-instruct/instructions.yaml`) are sentences, not JSON, so the evaluation
# uses text overlap (`tunebook.metrics.text_overlap`), and its baselines are copying the input and
# answering with the nearest training question's answer:
#
# - **exact match**: equal after lower-casing and dropping trailing punctuation — fair here because
#   every fact has exactly one answer string, but harsh: a correct paraphrase scores 0;
# - **token F1**: F1 over the bag of words (SQuAD style) — partial credit for shared words;
# - **ROUGE-L**: F-measure of the longest common subsequence of words — rewards the same words *in
#   the same order*.

# %%
from tunebook.metrics.text_overlap import overlap_scores

reference = "The outdoor sensor takes two AA lithium batteries, which keep working down to -40 °C. — Nimbus Support"
candidates = {
    "identical": reference,
    "lower-case, with a final period": reference.lower() + ".",
    "paraphrase": "It uses two lithium AA batteries that work down to -40 °C. — Nimbus Support",
    "wrong fact, same style": "The outdoor sensor takes three AAA alkaline batteries. — Nimbus Support",
    "right fact, no signature": "The outdoor sensor takes two AA lithium batteries, which keep working down to -40 °C.",
}
pd.DataFrame({name: overlap_scores([text], [reference]) for name, text in candidates.items()}).T.round(3)

# %% [markdown]
# Note how the *wrong* answer in the house style still earns partial token F1 and ROUGE-L: overlap
# metrics reward the style as much as the fact. Report exact match with them, and read examples.
#
# **The same recipe on real instructions.** The Nimbus questions ask for facts the training rows
# state, so the tuned model wins by a mile. `data/self_instruct` holds real, human-written tasks
# (Self-Instruct's; README, "Results"), and its test tasks are *kinds* of task never seen in
# training. Measured with the same model and LoRA shape:
#
# | data | test rows | token F1 base → tuned | best baseline | training |
# |---|---|---|---|---|
# | `data/instructions`, generated facts (`instructions.yaml`) | 86 | 0.165 → 0.957 | nearest answer 0.769 | 200 steps |
# | `data/self_instruct`, real tasks (`self-instruct.yaml`) | first 96 of 252 | 0.177 → 0.164 | copy the input 0.173 | 40 steps |
#
# A short adapter on 148 rows of 150 different tasks teaches an answer style (validation perplexity
# 6.93 → 6.04), not new skills: on unseen tasks the scores do not move. Fine-tuning adds what the
# data repeats.
#
# ## Exercises
#
# ★ applies what the notebook showed, ★★ combines it, ★★★ asks you to find something out. Each
# solution is in the collapsed cell below the exercise, with its output; each writes its own run
# folder under `runs/exercises/`.
#
# **★ 1. Fewer tokens.** Lower `eval.max_new_tokens` to 24 and evaluate the same adapter into
# another folder (`out_dir`). Which metric drops, and which error category explains it?

# %% jupyter={"source_hidden": true} tags=["solution"]
from tunebook.config import apply_overrides

short_answers = apply_overrides(config, {"eval.max_new_tokens": 24 if not SMOKE else 4})
cut = run_evaluation(short_answers, adapter_dir=str(adapter_dir), compare_base=False, overwrite=True,
                     out_dir=str(Path("runs/exercises" if not SMOKE else "runs/smoke/exercises") / "04-24-tokens"))
print({k: round(cut["tuned"][k], 3) for k in ("f1", "valid_json_rate", "exact_match")}, cut["tuned"]["error_counts"])
# Answers longer than 24 tokens are cut before their closing brace: they stop parsing
# (invalid_json), and an invalid answer finds nothing, so recall and F1 drop with valid_json_rate.

# %% [markdown]
# **★★ 2. The slow learning rate.** Train 60 steps at learning rate 2e-4 and at 1e-3 (each into
# its own folder) and compare perplexity and F1. Which one would you pick by perplexity alone?

# %% jupyter={"source_hidden": true} tags=["solution"]
from tunebook.train import run_training

compared = {}
for lr in (2e-4, 1e-3):
    run = apply_overrides(config, {"train.learning_rate": lr, "train.max_steps": 60 if not SMOKE else 2,
                                   "train.eval_steps": 60, "train.save_steps": 60,
                                   "eval.max_examples": 50 if not SMOKE else 4,
                                   "train.output_dir": ("runs/smoke/" if SMOKE else "runs/") + f"exercises/04-lr-{lr:g}"})
    run_training(run, overwrite=True)
    result = run_evaluation(run, compare_base=False, overwrite=True)["tuned"]
    compared[f"lr {lr:g}"] = {k: result[k] for k in ("perplexity", "f1", "recall", "valid_json_rate")}
pd.DataFrame(compared).round(3)

# %% [markdown]
# **★★★ 3. A baseline that is hard to beat.** Build a test set from *training* sentences (with
# their answers) and score the gazetteer on it with `tunebook.baselines`. Why is it near perfect
# there, and what does that say about evaluating on rows the model has seen?

# %% jupyter={"source_hidden": true} tags=["solution"]
from tunebook.baselines import run_baselines
from tunebook.data import load_and_validate

splits, _ = load_and_validate(config.data)
seen = splits["train"].select(range(50 if not SMOKE else 8))
on_seen = run_baselines("extraction", splits["train"], seen, config.data)["gazetteer"]
print({k: round(on_seen[k], 3) for k in ("f1", "precision", "recall")}, f"over {on_seen['num_examples']} training rows")
# Every entity of a training sentence is in the gazetteer: it scores near 1 by remembering, not by
# understanding. A test row that also occurs in train measures the same thing, which is why
# tunebook stops on leaked rows (01).

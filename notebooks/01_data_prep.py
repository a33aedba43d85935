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
# # 01 · Data preparation: from your file to the tokens the loss sees
#
# **What you will learn**
#
# - how to point tunebook at **your own data** (one cell below: path, recipe, columns), in the
#   formats public datasets ship in — CSV/TSV, JSON Lines, a JSON list (Alpaca), Parquet,
#   CoNLL/BIO token files, ShareGPT or OpenAI-style chats, a folder of split files, one file;
# - how every row is **validated** before any model loads, and what an error looks like;
# - how **splits** are kept or carved (stratified for classification), and how leaked rows are caught;
# - how an example becomes a **chat prompt**, and why the answer ends with the template's own
#   **end-of-turn** token;
# - how **completion-only labels** decide exactly which tokens are trained;
# - how the **length histogram** picks `max_length`;
# - two worked examples from file to trained adapter, **by config edits only**: a CoNLL-format NER
#   corpus and AG News' header-less CSV with integer labels.
#
# **Time**: about 5 minutes on a 2-core CPU with avx512_bf16 or AMX, about 15 in fp32 on one without
# (the two short trainings at the end take most of it).
# **Needs**: nothing before it.

# %% tags=["parameters"]
SMOKE = False  # True: a quick check (32 training rows, 2 training steps)

# ✏️ YOUR DATA: the one cell to change. These keys override the `data` section of CONFIG.
# Examples: data/examples/support_tickets.csv (a CSV with its own column names, below in section 2),
# data/extraction_conll (CoNLL token files), data/news_topics_csv (header-less CSV; a classification
# config is needed: CONFIG = "configs/minilm-l6/news-csv.yaml").
CONFIG = "configs/smollm2-135m-instruct/lora.yaml"
DATA = {
    "path": "data/extraction",                            # a file, a folder of split files, or a Hub id
    "recipe": "instruction",                              # instruction | chat | classification
    "columns": {"input": "sentence", "output": "output"}, # role -> your column name
    "instruction": "Extract the entities as JSON.",       # a fixed instruction when rows have none
    "system_prompt": "You are a precise information extraction assistant.",
}

# %%
# Setup: work from the repository root (config paths such as data/extraction are relative to it),
# and hide library warnings and progress bars so the outputs stay readable.
from pathlib import Path

from tunebook.notebook import use_repo_root

ROOT = use_repo_root()

# %% [markdown]
# ## 1. The config
#
# The `data` section of a run config says where the data is and how to read it. `recipe:
# instruction` needs an `output` (the answer) and an `instruction`; the extraction data has no
# instruction column, so one fixed `instruction` serves every row, and `columns` maps its column
# names to the recipe's roles (`sentence` plays the role `input`). The recipes and their roles:
#
# | recipe | roles | typical data |
# |---|---|---|
# | `instruction` | `instruction` (or a fixed one), optional `input`, `output` | Alpaca, Dolly, your Q&A sheet, NER as JSON |
# | `chat` | `messages` (OpenAI `role`/`content`) or ShareGPT `conversations` (`from`/`value`) | multi-turn chats |
# | `classification` | `text` (one column, or several joined), `label` (names or integer ids) | AG News, SMS spam |

# %%
import yaml

from tunebook.config import config_to_dict
from tunebook.notebook import notebook_config

config = notebook_config(CONFIG, SMOKE, overrides={f"data.{key}": value for key, value in DATA.items()},
                         name="data-prep")
RUN_DIR = Path(config.train.output_dir)  # plots and the processed dataset go here
print(yaml.safe_dump(config_to_dict(config)["data"], sort_keys=False, width=100))

# %% [markdown]
# ## 2. Load
#
# `tunebook.readers.read_splits` reads a file, a folder of split files (`train.csv`, `dev.jsonl`,
# `emerging.test.conll` ...), a mapping `{train: file, validation: file, test: file}` or a Hub
# dataset id. Every row remembers its line in the file, so errors and predictions point to a
# place you can open in an editor.

# %%
from tunebook.readers import read_splits

tables = read_splits(config.data.path, config.data.csv_header)
for split, table in tables.items():
    print(f"{split:<11}{len(table.rows):>6} rows  from {table.source}  columns {table.columns}")

# %%
import pandas as pd

pd.DataFrame(tables["train"].rows[:5])

# %% [markdown]
# To read **your own CSV** instead, change the data cell at the top, e.g. to the spreadsheet export
# in `data/examples/support_tickets.csv` (its own column names, one file, no splits):
#
# ```python
# DATA = {"path": "data/examples/support_tickets.csv", "recipe": "instruction",
#         "columns": {"instruction": "customer_question", "input": "details", "output": "agent_reply"},
#         "instruction": None, "system_prompt": "You are Nimbus Support."}
# ```
#
# and run the notebook again: nothing else changes.
#
# ## 3. Validate, map, split
#
# `load_and_validate` renames your columns to the recipe's roles, checks every row (no empty split,
# no empty or non-text answer, labels inside the label set, well-formed chats) and **stops if an
# example of validation/test also occurs in train** (a leaked test row makes the evaluation
# meaningless), carves missing splits, and adds `row`: each example's line in its file.

# %%
from tunebook.data import load_and_validate

splits, report = load_and_validate(config.data)
print({k: v for k, v in report.items() if k != "sources"})
splits

# %% [markdown]
# When something is wrong, the stage stops with one message naming the file, the line and the
# field, and the fix — before any model loads. Three deliberately broken files (we catch and print
# the errors; a real run would stop with them):

# %%
from tunebook.config import apply_overrides
from tunebook.errors import DataValidationError

broken = RUN_DIR / "broken"
broken.mkdir(parents=True, exist_ok=True)
(broken / "empty_answer.csv").write_text("sentence,output\nAda visited Paris.,\"{}\"\nThe mayor spoke.,\n")
(broken / "bad_line.jsonl").write_text('{"sentence": "A.", "output": "{}"}\n{"sentence": "B.", output: 1}\n')
(broken / "renamed.jsonl").write_text('{"sentence": "A.", "answer": "{}"}\n')
for name in ("empty_answer.csv", "bad_line.jsonl", "renamed.jsonl"):
    try:
        load_and_validate(apply_overrides(config, {"data.path": str(broken / name)}).data)
    except DataValidationError as error:
        print(f"{name}: {str(error).replace(str(broken) + '/', '')}\n")

# %% [markdown]
# **Splits.** Files named after their split are kept as they are. When a dataset has only one file,
# validation and test are carved from it — deterministically for a seed, and **stratified by
# label** for classification, so that a small dataset cannot lose a class from its test set.
# Copies of one example move together, so a duplicate cannot sit in train and in test. Here on the
# news-topic training file alone:

# %%
from collections import Counter

from tunebook.config import load_config

news_config = apply_overrides(load_config("configs/minilm-l6/lora.yaml"), {"data.path": "data/news_topics/train.jsonl"})
news_splits, news_report = load_and_validate(news_config.data)
for split, dataset in news_splits.items():
    counts = Counter(news_report["labels"][i] for i in dataset["label"])
    print(f"{split:<11}{len(dataset):>4} rows  {dict(sorted(counts.items()))}")

# %% [markdown]
# ## 4. From example to prompt
#
# The same function, `build_prompt`, makes the prompt for training and for generation (the
# classic silent bug: train on one template, generate with another). With a chat template (an
# instruction-tuned model such as SmolLM2) it is the template's text up to where the assistant's
# answer starts; a base model without a template gets the Alpaca layout (`### Instruction: ...`).
# The plain transformers call underneath is `tokenizer.apply_chat_template(messages,
# add_generation_prompt=True)`.

# %%
from tunebook.formatting import answer_text, build_prompt, prompt_messages
from tunebook.models import load_tokenizer

tokenizer = load_tokenizer(config.model.name)
example = splits["train"][0]
messages = prompt_messages(example, config.data)
print(messages)
print(build_prompt(tokenizer, messages) + answer_text(example, config.data))

# %% [markdown]
# **Where does the answer end?** The model must learn to *stop*, so the token that ends the answer
# is trained too — and it must be the one its chat template writes at the end of a turn, because
# that is where serving engines (llama.cpp, Ollama, vLLM) and `generate` stop. tunebook renders the
# whole conversation with the template and keeps what follows the prompt up to and including the
# first special token. For SmolLM2 that is `<|im_end|>`; Llama 3 ends a turn with `<|eot_id|>`
# (its EOS is `<|end_of_text|>`), Gemma with `<end_of_turn>`, Phi-3 with `<|end|>`, Mistral with
# `</s>` (tests/test_formatting.py checks all five).

# %%
from tunebook.formatting import end_of_turn_id, stop_token_ids

full = tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": "ANSWER"}], tokenize=False)
print(repr(full[full.index("ANSWER"):]))
print("end of turn:", tokenizer.convert_ids_to_tokens(end_of_turn_id(tokenizer)),
      "| generation stops on:", tokenizer.convert_ids_to_tokens(stop_token_ids(tokenizer)))

# %% [markdown]
# ## 5. Tokenize, with completion-only labels
#
# An example becomes `prompt_ids + answer_ids` (the answer ending with the end-of-turn token). The
# labels (what the loss compares the predictions with) are `-100` — ignored — on every prompt
# token: the model learns to *answer*, not to reproduce the question. Labels are built from
# positions, never from `input_ids == pad_token_id`: SmolLM2 pads with its end token, and masking
# by id would hide the real end token too (the model would then never stop generating).

# %%
from tunebook.formatting import IGNORE_INDEX, tokenize_example

encoded = tokenize_example(example, tokenizer, config.data)
n_prompt = encoded["labels"].count(IGNORE_INDEX)
print(f"{encoded['length']} tokens: {n_prompt} prompt tokens (label -100) + "
      f"{encoded['length'] - n_prompt} trained answer tokens (end of turn included)")
print("last 4 tokens:", [tokenizer.decode([t]) for t in encoded["input_ids"][-4:]])
print("their labels: ", encoded["labels"][-4:])

# %% [markdown]
# `show_trained_tokens` decodes the example and highlights the trained tokens (green); grey tokens
# are only context. If the answer were cut off, or the end token were not trained,
# `tokenize_dataset` would refuse the example (`check_labels`).

# %%
from tunebook.formatting import show_trained_tokens
from tunebook.notebook import show_html

show_html(show_trained_tokens(encoded["input_ids"], encoded["labels"], tokenizer, as_html=True))
print(show_trained_tokens(encoded["input_ids"], encoded["labels"], tokenizer))  # the same, as text

# %% [markdown]
# ## 6. Token lengths and `max_length`
#
# Every token costs compute and memory. `data.max_length: null` keeps every example whole; a set
# value **drops and counts** longer training examples of generation recipes (a truncated answer
# would teach the model to stop mid-JSON) and truncates classification texts (counted; a
# classifier still reads the first tokens, and no test row is lost). The histogram is saved as a
# PNG in the run folder too.

# %%
from tunebook.formatting import length_stats, suggest_max_length, tokenize_dataset
from tunebook.plots import plot_length_histogram

tokenized = tokenize_dataset(splits, tokenizer, config.data)
lengths = tokenized["train"]["length"]
max_length = suggest_max_length(lengths)
stats = length_stats(lengths, max_length)
print({k: round(v, 1) for k, v in stats.items()})
shorter = int(stats["p90"]) // 8 * 8
print(f"with max_length={shorter}, {length_stats(lengths, shorter)['over_max_length']} training examples would be dropped")
plot_length_histogram(lengths, max_length, RUN_DIR / "length_histogram.png")

# %% [markdown]
# `prepare_dataset` runs all of the above and writes what the model will see: the tokenized
# dataset, the statistics and the histogram (`python -m tunebook prepare CONFIG` does the same).
# Training does not need this folder, but it is the place to look when a run behaves strangely.

# %%
from tunebook.prepare import prepare_dataset

result = prepare_dataset(config, RUN_DIR / "prepared")
print(sorted(p.name for p in result["out_dir"].iterdir()))

# %% [markdown]
# ## 7. Worked example: a real NER corpus in CoNLL format, file to adapter, by config edits only
#
# Real named-entity corpora (CoNLL-2003, WikiGold, WNUT-17) ship one token per line with a BIO tag.
# `data/wikigold` is one of them, as published: **WikiGold** (Balasuriya et al. 2009, CC BY 4.0),
# 145 hand-annotated Wikipedia articles with CoNLL-2003's four types, split by article into
# `train/dev/test.conll` (its data card says how). Its tags are IOB1, as in CoNLL-2003's original
# files: an entity starts with `I-`, and `B-` only separates two adjacent entities of one type.
# `configs/smollm2-135m-instruct/wikigold.yaml` is the extraction config with `data.path` pointed
# at the folder (and settings chosen on `dev.conll`): tunebook joins the tokens into the sentence and
# turns the tags into the JSON answer, one key per entity type (`PER -> person`, `ORG ->
# organization`, `LOC -> location`, `MISC -> misc`; other tag sets keep their own names,
# lower-cased). `data.columns` has nothing to map in a token file and is ignored.

# %%
print("\n".join((ROOT / "data/wikigold/dev.conll").read_text().splitlines()[:12]))
conll_config = notebook_config("configs/smollm2-135m-instruct/wikigold.yaml", SMOKE, name="conll-example",
                               overrides={"train.max_steps": 30, "train.eval_steps": 30, "train.save_steps": 30,
                                          "eval.max_examples": 40})
conll_splits, conll_report = load_and_validate(conll_config.data)
print(conll_report["split_sizes"])
print(conll_splits["validation"][0])

# %% [markdown]
# From there it is an ordinary extraction run: 30 steps (a short run; the config trains 220)
# and the test F1 of the base model and the adapter on the first 40 test sentences.

# %%
from tunebook.evaluation import run_evaluation
from tunebook.train import run_training

run_training(conll_config, overwrite=True)  # overwrite: re-running the cell replaces its own run
conll_results = run_evaluation(conll_config, overwrite=True)

# %% [markdown]
# Thirty steps prove the plumbing, not a model: the evaluation itself warns that the *gazetteer*
# baseline (entity strings seen in training, looked up in the sentence) still beats the adapter on
# these 40 sentences. The config's full run (`python -m tunebook train
# configs/smollm2-135m-instruct/wikigold.yaml`, 220 steps, 9.5 minutes on a 2-core CPU) reaches
# entity F1 0.654 on all 170 test sentences, against 0.252 for the gazetteer (docs/baselines.md):
# far below the 0.955 of 02's generated sentences, and the honest figure for real text.

# %% [markdown]
# ## 8. Worked example: AG News' CSV with integer labels
#
# AG News publishes `train.csv` and `test.csv` **without a header**, each row `"3","title","description"`
# with the class counted **from 1** (`classes.txt` names them). `data/news_topics_csv` holds the
# news items in exactly that layout, and `configs/minilm-l6/news-csv.yaml` reads it by config keys
# alone: `csv_header` names the columns, `columns.text` joins title and description, `labels` lists
# the names in id order, `first_label_id: 1` says the ids count from 1, and validation is carved
# from `train.csv`.

# %%
news_csv = notebook_config("configs/minilm-l6/news-csv.yaml", SMOKE, name="news-csv-example",
                           overrides={"train.max_steps": 40})
print(yaml.safe_dump(config_to_dict(news_csv)["data"], sort_keys=False, width=100))
print((ROOT / "data/news_topics_csv/test.csv").read_text().splitlines()[0])
run_training(news_csv, overwrite=True)
news_results = run_evaluation(news_csv, overwrite=True)

# %% [markdown]
# Forty steps do not beat TF-IDF + logistic regression either, and the warning says so. The
# shipped 120-step config (`configs/minilm-l6/lora.yaml`, the same items as JSONL) does: test
# accuracy 0.967 against TF-IDF's 0.892 on its 120 test rows (`docs/baselines.md`).

# %% [markdown]
# ## 9. Chats: OpenAI messages and ShareGPT
#
# The `chat` recipe takes a `messages` column of `{"role", "content"}` turns ending with the
# assistant's answer (OpenAI's format), or ShareGPT's `conversations` of `{"from": "human"/"gpt",
# "value"}` turns, converted on reading. Only the last assistant turn is trained; earlier turns are
# context.

# %%
import json

sharegpt = RUN_DIR / "chats" / "train.jsonl"
sharegpt.parent.mkdir(parents=True, exist_ok=True)
sharegpt.write_text("".join(json.dumps({"conversations": [
    {"from": "human", "value": f"What is {i} + {i}?"}, {"from": "gpt", "value": f"{2 * i}."}]}) + "\n"
    for i in range(20)))
chat_config = apply_overrides(config, {"data.path": str(sharegpt.parent), "data.recipe": "chat", "data.columns": {}})
chat_splits, _ = load_and_validate(chat_config.data)
chat_example = tokenize_example(chat_splits["train"][0], tokenizer, chat_config.data)
print(chat_splits["train"][0]["messages"])
print(show_trained_tokens(chat_example["input_ids"], chat_example["labels"], tokenizer))

# %% [markdown]
# ## Exercises
#
# ★ applies what the notebook showed, ★★ combines it, ★★★ asks you to find something out. Each
# solution is in the collapsed cell below the exercise, with its output.
#
# **★ 1. Your CSV.** Load `data/examples/support_tickets.csv` (section 2 shows the data cell) with
# `load_and_validate`, and print how many rows each carved split got and the first training prompt.

# %% jupyter={"source_hidden": true} tags=["solution"]
tickets = apply_overrides(config, {"data.path": "data/examples/support_tickets.csv", "data.instruction": None,
                                   "data.columns": {"instruction": "customer_question", "input": "details",
                                                    "output": "agent_reply"},
                                   "data.system_prompt": "You are Nimbus Support."})
ticket_splits, ticket_report = load_and_validate(tickets.data)
print(ticket_report["split_sizes"])
print(build_prompt(tokenizer, prompt_messages(ticket_splits["train"][0], tickets.data)))

# %% [markdown]
# **★★ 2. Leaked rows.** Real corpora repeat short lines across splits (CoNLL-2003 has score lines
# such as "Bolton 3 2 1 0 5 2 7" in train and test). Copy two test sentences of
# `data/extraction_conll/test.conll` into a copy of `train.conll`: what does `load_and_validate`
# say, and what changes with `data.drop_leaked_rows: true`?

# %% jupyter={"source_hidden": true} tags=["solution"]
import shutil

leaky = RUN_DIR / "leaky_conll"
shutil.copytree(ROOT / "data/extraction_conll", leaky, dirs_exist_ok=True)
test_sentences = (leaky / "test.conll").read_text().split("\n\n")[1:3]  # skip the -DOCSTART- block
(leaky / "train.conll").write_text((leaky / "train.conll").read_text() + "\n" + "\n\n".join(test_sentences) + "\n")
# The shipped extraction config (your DATA cell may have changed `config`'s columns and instruction)
leaky_config = apply_overrides(notebook_config(CONFIG, SMOKE, name="data-prep"), {"data.path": str(leaky)})
try:
    load_and_validate(leaky_config.data)
except DataValidationError as error:
    print(str(error).replace(str(leaky) + "/", ""), "\n")
_, leak_report = load_and_validate(apply_overrides(leaky_config, {"data.drop_leaked_rows": True}).data)
print("dropped:", leak_report["dropped_leaked_rows"], "| sizes:", leak_report["split_sizes"])

# %% [markdown]
# **★★★ 3. What the system prompt costs.** Set `data.system_prompt` to `None` (SmolLM2's template
# then inserts its own default system prompt). How many tokens longer is every extraction example,
# and what share of the tokens computed in a training step is that?

# %% jupyter={"source_hidden": true} tags=["solution"]
extraction = load_config("configs/smollm2-135m-instruct/lora.yaml")
extraction_splits, _ = load_and_validate(extraction.data)
default_prompt = apply_overrides(extraction, {"data.system_prompt": None})
short = [tokenize_example(ex, tokenizer, extraction.data)["length"] for ex in extraction_splits["train"]]
long = [tokenize_example(ex, tokenizer, default_prompt.data)["length"] for ex in extraction_splits["train"]]
extra = sum(long) / len(long) - sum(short) / len(short)
print(f"+{extra:.1f} tokens per example = {extra / (sum(long) / len(long)):.0%} of the tokens computed, "
      "none of them trained")

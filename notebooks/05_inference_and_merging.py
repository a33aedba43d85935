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
# # 05 · Inference, merging and export: using adapters after training
#
# **What you will learn**
#
# - the **plain peft calls** after training: `PeftModel.from_pretrained`, `merge_and_unload`,
#   `load_adapter` / `set_adapter` — then tunebook's helpers that wrap them;
# - how to **merge** an adapter into the base weights (a plain model without peft) and **verify**
#   that the merged model computes the same thing (logit difference, identical greedy answers);
# - what goes wrong when you merge a QLoRA adapter into a **4-bit base**;
# - how to serve **two adapters on one base**, and how much memory that saves over two merged copies;
# - how to **export** the tuned model to one **GGUF** file for llama.cpp, Ollama and LM Studio, and
#   check that the file answers like the model you trained.
#
# **Time**: 17 minutes on a shared 2-core CPU (measured; less on a quiet one): a 100-step support
# adapter, the merges, the export.
# **Needs**: the adapters of 02 and 03 (short ones are trained here if they are missing).

# %% tags=["parameters"]
SMOKE = False  # True: 2-step adapters, short generations, output under runs/smoke/

# %%
# Setup: work from the repository root (config paths such as data/extraction are relative to it),
# and hide library warnings and progress bars so the outputs stay readable.
from pathlib import Path

from tunebook.notebook import use_repo_root

ROOT = use_repo_root()

# %% [markdown]
# ## The adapters
#
# This notebook uses the extraction adapter of 02 and the QLoRA adapter of 03. **If either folder
# does not exist yet, a short adapter is trained first** (60 steps for LoRA, 20 for QLoRA; 2 in
# smoke mode), so the notebook runs on its own.

# %%
from tunebook.notebook import ensure_adapter, notebook_config, run_folder

config = notebook_config("configs/smollm2-135m-instruct/lora.yaml", SMOKE)
adapter_dir = ensure_adapter(config, 2 if SMOKE else 60)
NAME = config.model.name
WORK = Path(run_folder("inference", SMOKE))  # merged models, exports and saved adapters go here

# %% [markdown]
# ## 1. The plain peft calls
#
# A saved adapter is a folder with `adapter_config.json` (which base model, which layers, r, alpha)
# and `adapter_model.safetensors` (the A and B matrices, a few MB). `PeftModel.from_pretrained`
# attaches it to a base model; `merge_and_unload` folds `(alpha/r)·B·A` into the base weights and
# returns an ordinary transformers model.

# %%
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from tunebook.models import load_tokenizer, resolve_model

base = AutoModelForCausalLM.from_pretrained(resolve_model(NAME), dtype=torch.float32)
with_adapter = PeftModel.from_pretrained(base, adapter_dir)  # base + adapter, unmerged
print(type(with_adapter).__name__, "->", with_adapter.peft_config["default"].target_modules)
plain_merged = with_adapter.merge_and_unload()  # W0 + (alpha/r) B A, written into the weights
print(type(plain_merged).__name__, "| any lora_ parameter left:", any("lora_" in n for n, _ in plain_merged.named_parameters()))

# %% [markdown]
# tunebook's helpers are these calls plus the decisions around them: `load_for_inference` loads
# the base the way the adapter was trained (quantized or not), `merge_adapter` merges in fp32 —
# into the *dequantized* base for a QLoRA adapter (section 3 shows why) — and writes the result
# atomically with its tokenizer.
#
# ## 2. Base + adapter: load and generate

# %%
from tunebook.formatting import build_prompt, prompt_messages
from tunebook.inference import generate, load_for_inference

model, tokenizer = load_for_inference(NAME, adapter_dir)
sentences = ["Maria Okafor joined the Bank of Lisbon in Nairobi on 3 March 2021.",
             "Tourists visiting Dhaka can now take a night train to Montevideo."]
prompts = [build_prompt(tokenizer, prompt_messages({"input": s}, config.data)) for s in sentences]
for sentence, answer in zip(sentences, generate(model, tokenizer, prompts, max_new_tokens=config.eval.max_new_tokens)):
    print(f"{sentence}\n  -> {answer}")

# %% [markdown]
# ## 3. Merge the adapter into the base, and check it
#
# Merging gives an ordinary model — no peft needed to serve it, no extra matmuls per token — at the
# price of a full copy of the weights per task. `merge_adapter` writes it (safetensors + tokenizer)
# to a separate folder; the base model is never modified. `verify_merge` compares it with base +
# adapter on the same prompts.

# %%
from tunebook.inference import merge_adapter, merge_into_quantized_demo, verify_merge
from tunebook.models import load_model
from tunebook.notebook import folder_size_mb

merged_dir = merge_adapter(NAME, adapter_dir, WORK / "merged-extraction")
print(f"adapter: {folder_size_mb(adapter_dir):.1f} MB on disk; merged model: {folder_size_mb(merged_dir):.0f} MB")
merged = load_model(str(merged_dir))  # a plain transformers model
check = verify_merge(model, merged, tokenizer, prompts, max_new_tokens=config.eval.max_new_tokens)
print(f"max |logit difference|: {check['max_abs_logit_diff']:.2e}; same greedy answers: {check['greedy_identical']}")

# %% [markdown]
# A difference of 1e-4 or less is float rounding (the merged weights are rounded once more, and the
# sums run in a different order), and the greedy answers are identical: the merged model *is* the
# tuned model.
#
# ## 4. Why not merge into a 4-bit base?
#
# A QLoRA adapter was trained on top of the NF4-rounded weights. There are three ways to merge it,
# and `merge_into_quantized_demo` measures each against the unmerged 4-bit model + adapter (the
# model as it was trained):
#
# - **dequantized merge** (what `merge_adapter` does for QLoRA adapters): dequantize NF4 to fp32,
#   then add B·A. What is left is rounding: the reference computes in bf16, and bitsandbytes'
#   CPU kernels dequantize NF4 blocks to bf16.
# - **quantized merge**: add B·A and round the result back to NF4. The update is mostly smaller than
#   the gap between two NF4 levels, so much of it is rounded away, and W0's rounding moves too.
# - **full-precision base merge**: add B·A to the *original* fp32 weights. The adapter learned to
#   correct the NF4 weights, not these, so this is a different model too.

# %%
import pandas as pd

qlora_config = notebook_config("configs/smollm2-135m-instruct/qlora-4bit.yaml", SMOKE)
qlora_adapter = ensure_adapter(qlora_config, 2 if SMOKE else 20)
demo = merge_into_quantized_demo(NAME, qlora_adapter, tokenizer, prompts)
pd.Series(demo, name="max |logit difference| to the trained 4-bit model").to_frame()

# %% [markdown]
# The dequantized merge is the floor (bf16 rounding over 30 layers); the quantized merge lands far
# further away, and the merge into the original full-precision weights is far off — the adapter
# was trained to correct NF4 weights that no longer exist there. So: serve a QLoRA adapter
# unmerged on the 4-bit base, or merge it into the dequantized weights and serve a 16/32-bit model.
#
# ## 5. Two adapters on one base
#
# One copy of the base weights can carry any number of adapters; a forward pass uses the active one.
# A second task: a short adapter on the instruction-following data (Nimbus Support answers; see
# 01). If it exists from an earlier run of this notebook, it is reused. The plain peft calls are
# `peft_model.load_adapter(folder, adapter_name=...)` and `peft_model.set_adapter(name)`;
# `load_adapters` / `set_active_adapter` wrap them.

# %%
from tunebook.notebook import INSTRUCTIONS_OVERRIDES
from tunebook.train import run_training

SUPPORT_STEPS = 100  # ~1 epoch of 862 examples at batch 8 (smoke mode: 2)
support_config = notebook_config("configs/smollm2-135m-instruct/lora.yaml", SMOKE, name="smollm2-support-lora",
                                 overrides={**INSTRUCTIONS_OVERRIDES, "train.max_steps": SUPPORT_STEPS})
support_adapter = Path(support_config.train.output_dir) / "adapter"
if not (support_adapter / "adapter_config.json").is_file():
    run_training(support_config, overwrite=True)

# %%
from tunebook.inference import load_adapters, set_active_adapter

two = load_adapters(NAME, {"extraction": adapter_dir, "support": support_adapter})
question = "How long do the batteries of the outdoor sensor last?"
task_prompts = {"extraction": prompts[0],
                "support": build_prompt(tokenizer, prompt_messages({"instruction": question}, support_config.data))}
for name, prompt in task_prompts.items():
    set_active_adapter(two, name)  # = two.set_adapter(name), with a clear error for an unknown name
    print(f"[{name} adapter] {generate(two, tokenizer, [prompt], max_new_tokens=config.eval.max_new_tokens)[0]}")
with two.disable_adapter():
    print(f"[no adapter] {generate(two, tokenizer, [task_prompts['support']], max_new_tokens=config.eval.max_new_tokens)[0]}")

# %% [markdown]
# How good is the support adapter? The text-overlap metrics of 04 on test questions, with and
# without the adapter:

# %%
from tunebook.data import load_and_validate
from tunebook.evaluation import evaluate_generation

support_test = load_and_validate(support_config.data)[0]["test"].select(range(4 if SMOKE else 20))
set_active_adapter(two, "support")
scores = {"support adapter": evaluate_generation(two, tokenizer, support_test, support_config.data, support_config.eval, task="text")}
with two.disable_adapter():
    scores["base"] = evaluate_generation(two, tokenizer, support_test, support_config.data, support_config.eval, task="text")
pd.DataFrame({name: {k: s[k] for k in ("exact_match", "token_f1", "rouge_l", "num_examples")}
              for name, s in scores.items()}).round(3)

# %% [markdown]
# ### Memory: one base + two adapters vs two merged models

# %%
from tunebook.inference import model_memory_bytes
from tunebook.notebook import mb

shared = model_memory_bytes(two)
adapters = sum(p.numel() * p.element_size() for n, p in two.named_parameters() if "lora_" in n)
one_merged = model_memory_bytes(merged)
print(f"one base + 2 adapters: {mb(shared):6.0f} MB  (the adapters: {mb(adapters):.1f} MB)")
print(f"two merged models:     {mb(2 * one_merged):6.0f} MB")
print(f"each further task costs {mb(adapters / 2):.1f} MB as an adapter, {mb(one_merged):.0f} MB as a merged model")

# %% [markdown]
# The trade-off: unmerged adapters add a few small matmuls to every forward pass, and one batch uses
# one adapter at a time here (peft can also mix adapters within a batch, and serving engines such as
# vLLM batch many LoRA adapters together).
#
# ## 6. Save and reload: the same outputs
#
# `save_pretrained` on a model with several adapters writes one sub-folder per adapter. Reloading
# them on a fresh base must give exactly the same model.

# %%
saved = WORK / "two-adapters"
two.save_pretrained(saved)
print(sorted(str(p.relative_to(saved)) for p in saved.rglob("*") if p.is_file()))
reloaded = load_adapters(NAME, {"extraction": saved / "extraction", "support": saved / "support"})
for name, prompt in task_prompts.items():
    set_active_adapter(two, name)
    set_active_adapter(reloaded, name)
    same = verify_merge(two, reloaded, tokenizer, [prompt], max_new_tokens=config.eval.max_new_tokens)
    print(f"{name:<11} max |logit difference| {same['max_abs_logit_diff']:.1e}; same greedy answer: {same['greedy_identical']}")

# %% [markdown]
# ## 7. Export to GGUF: take the model home
#
# The merged model still needs Python, transformers and a folder of files. Local runtimes —
# llama.cpp, Ollama, LM Studio — load one **GGUF** file instead: the weights plus everything needed
# to run them without Python (architecture, tokenizer, chat template). `write_gguf` writes the
# merged model in one of three weight types:
#
# - **f16** / **bf16**: every weight rounded to 16 bits (bf16 keeps fp32's range, f16 more precision);
# - **q8_0**: blocks of 32 weights stored as 8-bit integers with one 16-bit scale per block —
#   about half of f16.
#
# Norms stay in fp32 in all three (they are tiny). For the whole pipeline on a run folder — merge,
# write, Ollama Modelfile, and a verification on the full test split — use the command line:
# `tunebook export configs/smollm2-135m-instruct/lora.yaml --quant q8_0` (see `docs/export.md`).

# %%
from tunebook.gguf_convert import write_gguf

GGUF_DIR = WORK / "gguf"
files = {quant: write_gguf(merged, tokenizer, GGUF_DIR / f"extraction-{quant}.gguf", quant, name="extraction")
         for quant in ("f16", "bf16", "q8_0")}
sizes = {"adapter (safetensors)": folder_size_mb(adapter_dir),
         "merged model (fp32 safetensors)": folder_size_mb(merged_dir),
         **{f"GGUF {quant}": path.stat().st_size / 2**20 for quant, path in files.items()}}
pd.Series(sizes, name="MB on disk").round(1).to_frame()

# %% [markdown]
# The merged fp32 model takes 4 bytes per weight; f16 and bf16 take 2 and q8_0 about 1.06 (34
# bytes per 32 weights). The tokenizer and chat template add well under 1 MB.
#
# **Does the file compute what we trained?** `load_gguf_model` reads a GGUF back with
# transformers' own GGUF reader, which dequantizes every weight to fp32: the same PyTorch graph,
# with the file's weights. Two checks against the merged model: the largest weight difference, and
# the next-token logits at every position of our prompts.

# %%
from tunebook.export import compare_logits, compare_weights, load_gguf_model
from tunebook.formatting import encode_prompt

prompt_ids = [encode_prompt(tokenizer, p) for p in prompts]
# (model, tokenizer) per file; the tests' smoke run reads back q8_0 only (each read takes ~40 s on a 2-core CPU)
exported = {quant: load_gguf_model(path) for quant, path in files.items() if not SMOKE or quant == "q8_0"}
rows = {}
for quant, (gguf_model, gguf_tokenizer) in exported.items():
    weights = compare_weights(merged, gguf_model, quant)
    logits = compare_logits(merged, gguf_model, prompt_ids)
    rows[quant] = {"max |weight diff|": weights["max_abs_diff"], "weights = merged rounded": weights["weights_exact"],
                   "max |logit diff|": logits["max_abs_diff"], "top-1 agreement": logits["top1_agreement"],
                   "same prompt ids": all(encode_prompt(gguf_tokenizer, p) == x for p, x in zip(prompts, prompt_ids))}
print(f"over {logits['positions']} positions of {logits['prompts']} prompts")
pd.DataFrame(rows).T

# %% [markdown]
# For f16 and bf16 *every* weight read back equals the merged weight rounded to 16 bits: nothing was
# lost but the rounding itself, and the tensor names and the reordering of the attention weights
# that llama.cpp needs round-trip. The logits move by that rounding; what matters is whether the
# *top* token changes (the top-1 agreement over every position). The tokenizer rebuilt from the
# file gives the same token ids for every prompt. Greedy answers side by side:

# %%
test = load_and_validate(config.data)[0]["test"].select(range(2 if SMOKE else 8))
test_prompts = [build_prompt(tokenizer, prompt_messages(example, config.data)) for example in test]
n_new = 16 if SMOKE else config.eval.max_new_tokens
answers = {"merged": generate(merged, tokenizer, test_prompts, n_new, autocast=False, desc="merged")}
for quant, (gguf_model, gguf_tokenizer) in exported.items():
    answers[f"GGUF {quant}"] = generate(gguf_model, gguf_tokenizer, test_prompts, n_new, autocast=False, desc=quant)
for quant in exported:
    same = sum(a == b for a, b in zip(answers["merged"], answers[f"GGUF {quant}"]))
    print(f"GGUF {quant}: {same}/{len(test)} answers identical to the merged model's")
from IPython.display import display

with pd.option_context("display.max_colwidth", None):
    display(pd.DataFrame({"sentence": test["input"], **answers}))

# %% [markdown]
# **Running the file in Ollama, LM Studio or llama.cpp.** `tunebook export` also writes an Ollama
# `Modelfile` next to the GGUF: the ChatML prompt format translated to Ollama's template language,
# the system prompt the adapter was trained with, `<|im_end|>` as stop token, and greedy decoding.
# On a machine with Ollama (not run here): `ollama create smollm2-lora -f Modelfile`, then
# `ollama run smollm2-lora`. `make llama-cpp` installs llama-cpp-python (it compiles llama.cpp)
# and scores the file in llama.cpp itself; `docs/export.md` has the measured table.

# %%
import importlib.util

from tunebook.ollama import modelfile_text

print(modelfile_text(files["q8_0"].name, tokenizer, config, "smollm2-lora", config.eval.max_new_tokens))
if importlib.util.find_spec("llama_cpp"):
    from tunebook.llamacpp import chat_answer, load_llama

    llm = load_llama(files["q8_0"])
    print("llama.cpp:", chat_answer(llm, prompt_messages(test[0], config.data), config.eval.max_new_tokens))
    print("merged:   ", answers["merged"][0])
else:
    print("llama-cpp-python is not installed here (`make llama-cpp` installs it).")

# %% [markdown]
# ## Exercises
#
# ★ applies what the notebook showed, ★★ combines it, ★★★ asks you to find something out. Each
# solution is in the collapsed cell below the exercise, with its output.
#
# **★ 1. What you would ship.** Load the merged folder with plain
# `transformers.AutoModelForCausalLM.from_pretrained` (no tunebook, no peft) and answer the first
# sentence of section 2.

# %% jupyter={"source_hidden": true} tags=["solution"]
shipped = AutoModelForCausalLM.from_pretrained(merged_dir)
shipped_tokenizer = load_tokenizer(str(merged_dir))
ids = shipped_tokenizer.apply_chat_template(prompt_messages({"input": sentences[0]}, config.data),
                                            add_generation_prompt=True, return_tensors="pt", return_dict=True)
out = shipped.generate(**ids, max_new_tokens=config.eval.max_new_tokens, do_sample=False)
print(shipped_tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))

# %% [markdown]
# **★★ 2. The wrong adapter.** Send the extraction prompt through the *support* adapter. What does
# it answer, and why?

# %% jupyter={"source_hidden": true} tags=["solution"]
set_active_adapter(two, "support")
print(generate(two, tokenizer, [task_prompts["extraction"]], max_new_tokens=config.eval.max_new_tokens)[0])
# The support adapter learned one answer style (short sentences signed "— Nimbus Support") for
# its system prompt; given the extraction prompt it still writes in that style: an adapter is a
# task, not a skill the model combines with others.

# %% [markdown]
# **★★★ 3. Merging the QLoRA adapter.** `merge_adapter(NAME, qlora_adapter, ...)` reads the run's
# `config.yaml`, sees `quantization: 4bit` and merges into the dequantized weights. Verify it
# against the 4-bit model + adapter it was trained as: is the logit difference closer to section
# 3's LoRA merge or to section 4's dequantized merge, and why?

# %% jupyter={"source_hidden": true} tags=["solution"]
qlora_merged = load_model(str(merge_adapter(NAME, qlora_adapter, WORK / "merged-qlora")))
trained_as = load_for_inference(NAME, qlora_adapter, quantization="4bit")[0]
qlora_check = verify_merge(trained_as, qlora_merged, tokenizer, prompts, max_new_tokens=config.eval.max_new_tokens)
print(f"max |logit difference| {qlora_check['max_abs_logit_diff']:.3f}; same greedy answers: {qlora_check['greedy_identical']}")
# Close to section 4's dequantized merge: the reference computes in bf16 on dequantized NF4 blocks,
# the merge in fp32; the LoRA merge of section 3 compared two fp32 models.

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
# # 03 · QLoRA and 8-bit: the same LoRA job with a quantized base
#
# **What you will learn**
#
# - what QLoRA quantizes and what it does not: **NF4** weights, **double quantization**, the
#   **compute dtype**, **paged optimizers** — first with bitsandbytes' `BitsAndBytesConfig` and a
#   `Linear4bit` layer, byte by byte;
# - how 8-bit (LLM.int8) differs;
# - how to train both with `configs/smollm2-135m-instruct/qlora-4bit.yaml` and `lora-8bit.yaml`
#   (the same task and knobs as 02; only `model.quantization` differs);
# - what the quantized base saves — model footprint, peak memory — and what it costs in speed,
#   loss and test F1, measured side by side with LoRA.
#
# **Time**: 26 minutes on a quiet 2-core CPU (measured: three 150-step runs, two of them with bitsandbytes'
# CPU kernels, and two evaluations). **Needs**: nothing before it (it reuses 04's score of 02's
# adapter when 04 has run).

# %% tags=["parameters"]
SMOKE = False  # True: 2 steps of batch 2 per method, output under runs/smoke/

# %%
# Setup: work from the repository root (config paths such as data/extraction are relative to it),
# and hide library warnings and progress bars so the outputs stay readable.
from pathlib import Path

from tunebook.notebook import use_repo_root

ROOT = use_repo_root()

# %% [markdown]
# ## 1. What gets quantized
#
# LoRA trains only the small A and B matrices; the base weights W0 are read in every step but never
# updated. So they can be stored in fewer bits:
#
# - **NF4** (4-bit NormalFloat, `bnb_4bit_quant_type="nf4"`): each block of 64 weights is scaled by
#   its largest absolute value and every weight is stored as one of 16 levels. The levels are the
#   quantiles of a normal distribution, the shape trained weights have, so they waste fewer levels
#   than plain 4-bit integers. About 4× smaller than bf16.
# - **Double quantization** (`bnb_4bit_use_double_quant=True`): the per-block scales themselves are
#   quantized to 8 bits (0.5 → ~0.13 extra bits per weight).
# - **Compute dtype** (`bnb_4bit_compute_dtype`): NF4 is a storage format only. Each matmul
#   dequantizes its weight blocks to this dtype and computes in it; tunebook uses the training
#   precision (bf16 where fast, see 00). It decides speed and numerics.
# - **Paged optimizers** (`paged_adamw_8bit`): on CUDA, optimizer state lives in memory that the
#   driver can page to CPU RAM during the spikes of a long batch, instead of failing with
#   out-of-memory. tunebook picks it for QLoRA on CUDA; on CPU there is nothing to page.
# - **8-bit (LLM.int8)**: int8 weights with one scale per row; the rare input features with large
#   values ("outliers") are computed in fp16 instead. About 2× smaller than bf16.
#
# ## 2. The plain bitsandbytes calls
#
# A `BitsAndBytesConfig` is all `from_pretrained` needs to quantize while it loads. Here one layer
# by hand first: a `Linear4bit` holds the weights packed two per byte, plus one scale per block.

# %%
import torch
from bitsandbytes.nn import Linear4bit
from transformers import BitsAndBytesConfig

bnb_config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                bnb_4bit_compute_dtype=torch.bfloat16)
print(bnb_config.to_dict() | {"bnb_4bit_compute_dtype": "bfloat16"})

torch.manual_seed(0)
dense = torch.nn.Linear(576, 1536, bias=False)  # one of SmolLM2's MLP projections, full precision
layer = Linear4bit(576, 1536, bias=False, compute_dtype=torch.bfloat16, quant_type="nf4", compress_statistics=True)
layer.load_state_dict(dense.state_dict())
layer = layer.to("cpu")  # quantizes on the move to the device (bitsandbytes' convention)
stored = layer.weight.numel() * layer.weight.element_size()
state = layer.weight.quant_state
scales = state.absmax.numel() * state.absmax.element_size() + state.state2.absmax.numel() * 4
print(f"{dense.weight.numel():,} weights: {stored:,} bytes packed + {scales:,} bytes of scales "
      f"= {8 * (stored + scales) / dense.weight.numel():.2f} bits per weight (bf16: 16, fp32: 32)")
x = torch.randn(4, 576)
print(f"max |4-bit - fp32| output: {(layer(x.bfloat16()).float() - dense(x)).abs().max():.3f} "
      f"(outputs of size ~{dense(x).abs().mean():.2f}: NF4 rounds every weight to one of 16 levels)")

# %% [markdown]
# Only the linear layers inside the transformer blocks are quantized; embeddings, the output head and
# the norms stay unquantized, in the compute dtype (bf16 here), like the frozen base of 02. Many
# tutorials call peft's `prepare_model_for_kbit_training`, which upcasts them to fp32; tunebook does
# not: RMSNorm computes in fp32 internally anyway, the fp32 copy of SmolLM2's embedding alone would
# add 57 MB to a 4-bit model of about 110 MB, and FSDP cannot shard a model of mixed dtypes (see
# `docs/scaling.md`). tunebook builds the same `BitsAndBytesConfig` (`tunebook.quantization`), and
# picks the optimizer:

# %%
from tunebook.decisions import choose_optimizer
from tunebook.environment import choose_device
from tunebook.notebook import notebook_config
from tunebook.quantization import make_quantization_config

nf4 = make_quantization_config("4bit")
print({k: getattr(nf4, k) for k in ("load_in_4bit", "bnb_4bit_quant_type", "bnb_4bit_use_double_quant", "bnb_4bit_compute_dtype")})
print({k: getattr(make_quantization_config("8bit"), k) for k in ("load_in_8bit", "llm_int8_threshold")})
qlora_config = notebook_config("configs/smollm2-135m-instruct/qlora-4bit.yaml", SMOKE)
print("optimizer here:", choose_optimizer(qlora_config, choose_device().value))
print("optimizer on a GPU:", choose_optimizer(qlora_config, "cuda"))

# %% [markdown]
# ## 3. Model footprint
#
# `model_memory_bytes` adds up the bytes of every parameter and buffer, packed 4/8-bit weights and
# their scales included. Full precision here means the frozen base as LoRA training stores it (bf16).

# %%
from tunebook.inference import model_memory_bytes
from tunebook.models import load_model

NAME = qlora_config.model.name
footprints = {}
for label, quantization in (("LoRA", None), ("8-bit LoRA", "8bit"), ("QLoRA 4-bit", "4bit")):
    model = load_model(NAME, quantization=quantization, dtype=torch.bfloat16)  # as training loads it
    footprints[label] = model_memory_bytes(model)
    print(f"{label:<12}{footprints[label] / 2**20:7.0f} MB")
    del model

# %% [markdown]
# Less than 4× smaller: SmolLM2's embedding matrix (49,152 × 576, 28M of its 135M parameters) is
# not quantized and stays in bf16. For a 7B model the blocks are ~97 % of the weights and
# 4-bit gets close to the full 4× (see the table in 00).
#
# ## 4. Train all three
#
# Each run starts in its own Python process (`tunebook train` on the config): on a CPU, peak memory
# is the peak resident memory of the *process*, which counts everything it holds, so a run inside
# a notebook kernel would also count the models and data that kernel keeps. That is why LoRA is
# trained again here rather than read from 02 (which trained it in its kernel): the same config and
# seed, in its own process like the other two, into `runs/smollm2-lora-03`.

# %%
from tunebook.config import apply_overrides
from tunebook.notebook import train_in_subprocess

lora_config = notebook_config("configs/smollm2-135m-instruct/lora.yaml", SMOKE)
lora_here = apply_overrides(lora_config, {"train.output_dir": lora_config.train.output_dir + "-03"})
runs = {"LoRA": train_in_subprocess(lora_here)}

# %%
eightbit_config = notebook_config("configs/smollm2-135m-instruct/lora-8bit.yaml", SMOKE)
runs["8-bit LoRA"] = train_in_subprocess(eightbit_config)

# %%
runs["QLoRA 4-bit"] = train_in_subprocess(qlora_config)

# %% [markdown]
# ## 5. Side by side

# %%
from tunebook.notebook import training_comparison
from tunebook.plots import plot_loss_curves

OUT = Path(qlora_config.train.output_dir).parent / "quantization-comparison"
OUT.mkdir(parents=True, exist_ok=True)
comparison = training_comparison(runs, footprints)
comparison.to_csv(OUT / "comparison.csv")
plot_loss_curves({label: m["train_loss"] + m["eval_loss"] for label, m in runs.items()}, path=OUT / "loss_comparison.png",
                 title="Same job, three ways to store the base")

# %%
comparison

# %% [markdown]
# How to read the table:
#
# - **Model footprint** shrinks as expected, bf16 → int8 → NF4; the unquantized embedding matrix
#   (28M parameters, 57 MB in bf16) keeps NF4 above a quarter.
# - **Peak memory** barely follows the footprint for this small model: as 00 showed, activations and
#   the 49k-wide logits dominate at 135M parameters, and the process's peak also counts Python, the
#   libraries, the data and the loading transient (4-bit and 8-bit loading read every weight in full
#   precision to quantize it). On a 7B+ model on a GPU the weights dominate and QLoRA's saving
#   approaches the 3–4× of the footprint (see 00).
# - **Speed**: the three runs were made one after the other on the same machine; compare speeds
#   only between runs made under the same load. Quantized steps dequantize their weights (4-bit)
#   or split out the outlier columns (8-bit) in every matmul; on a CPU, bitsandbytes' kernels are
#   much slower than on a GPU.
# - **Loss**: the curves lie close to each other; the adapters learn to work with the rounded base
#   weights. The QLoRA paper found 4-bit NF4 + LoRA matches 16-bit LoRA on its benchmarks.
#
# ## 6. Does the 4-bit base cost accuracy?
#
# Loss is only a proxy; the task metric decides. Evaluate the QLoRA adapter the way 04 evaluates
# LoRA — greedy decoding on the held-out test sentences, on the 4-bit base it was trained with —
# and put it next to the LoRA adapter (04's results when 04 has run, otherwise evaluated here).

# %%
import json

import pandas as pd

from tunebook.evaluation import run_evaluation

lora_results = Path(lora_config.train.output_dir) / "eval" / "results.json"  # 04's, of 02's adapter
task_metrics = {
    "LoRA": (json.loads(lora_results.read_text()) if lora_results.is_file()
             else run_evaluation(lora_here, compare_base=False, overwrite=True))["tuned"],
    "QLoRA 4-bit": run_evaluation(qlora_config, compare_base=False, overwrite=True)["tuned"],
}
columns = ["f1", "precision", "recall", "valid_json_rate", "exact_match", "perplexity", "num_examples"]
pd.DataFrame({label: {c: m[c] for c in columns} for label, m in task_metrics.items()}).T.round(3)

# %% [markdown]
# QLoRA lands close to LoRA, not on it: most of the gap is in exact match (whole sentences right),
# where every small entity error counts. With a 7B model the quantization error is a smaller share
# of what the model knows; the QLoRA paper found no gap on its benchmarks.
#
# A QLoRA adapter is trained on the *dequantized NF4* weights: merge it into those, not into the
# original ones and not back into 4 bits (05 measures why).
#
# ## Exercises
#
# ★ applies what the notebook showed, ★★ combines it, ★★★ asks you to find something out. Each
# solution is in the collapsed cell below the exercise, with its output.
#
# **★ 1. Bits per weight of 8-bit.** Build a `Linear8bitLt` from the same `dense` layer (bitsandbytes
# quantizes it on `.to("cpu")`) and count its bytes per weight, scales included.

# %% jupyter={"source_hidden": true} tags=["solution"]
from bitsandbytes.nn import Linear8bitLt

int8 = Linear8bitLt(576, 1536, bias=False, has_fp16_weights=False)
int8.load_state_dict(dense.state_dict())
int8 = int8.to("cpu")
int8_bytes = int8.weight.numel() * int8.weight.element_size() + int8.weight.SCB.numel() * int8.weight.SCB.element_size()
print(f"{8 * int8_bytes / dense.weight.numel():.2f} bits per weight (int8 weights + one fp32 scale per row)")

# %% [markdown]
# **★★ 2. The 8-bit adapter's test F1.** Evaluate the 8-bit adapter like section 6. Where does it
# land between LoRA and QLoRA?

# %% jupyter={"source_hidden": true} tags=["solution"]
task_metrics["8-bit LoRA"] = run_evaluation(eightbit_config, compare_base=False, overwrite=True)["tuned"]
pd.DataFrame({label: {c: m[c] for c in columns} for label, m in task_metrics.items()}).T.round(3)

# %% [markdown]
# **★★★ 3. Where does NF4 lose precision?** Quantize `dense` with NF4 and with 4-bit floats
# (`quant_type="fp4"`) and compare the mean absolute weight error of each; then explain the
# difference from the shape of the weight distribution.

# %% jupyter={"source_hidden": true} tags=["solution"]
import bitsandbytes.functional as bnbf

weights = dense.weight.data.bfloat16()
for kind in ("nf4", "fp4"):
    packed, qstate = bnbf.quantize_4bit(weights, quant_type=kind, blocksize=64)
    error = (bnbf.dequantize_4bit(packed, qstate).float() - weights.float()).abs().mean()
    print(f"{kind}: mean |error| {error:.5f}")
print(f"weights: mean |w| {weights.float().abs().mean():.5f}; NF4's 16 levels sit at the quantiles of a normal "
      "distribution, so they are dense where most weights are (near 0)")

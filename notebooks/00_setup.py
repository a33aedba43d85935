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
# # 00 · Setup: your machine, its number format, and whether a model fits
#
# **What you will learn**
#
# - which library versions and hardware tunebook sees, and how it decides the **device** and the
#   **precision** (bf16 / fp16 / fp32) — always with the reason;
# - how to **predict the memory** of a fine-tuning run from the model's shape alone, before you load
#   anything or rent a GPU, and which term dominates for small and for large models;
# - which method (full fine-tuning, LoRA, 8-bit LoRA, QLoRA) fits which GPU for 1B to 70B models;
# - what to change when a run does not fit: QLoRA, gradient checkpointing, shorter sequences, a
#   smaller batch with gradient accumulation.
#
# **Time**: under a minute on a 2-core CPU; no model is loaded (the estimator reads only the
# model's config). **Needs**: nothing; this is the first notebook.

# %% tags=["parameters"]
SMOKE = False  # papermill sets True for a quick check; nothing heavy runs in this notebook anyway

# %%
# Setup: work from the repository root (config paths such as data/extraction are relative to it),
# and hide library warnings and progress bars so the outputs stay readable.
from tunebook.notebook import use_repo_root

ROOT = use_repo_root()

# %% [markdown]
# ## 1. The environment report
#
# Every training run saves this report as `environment.json` in its run folder, because the
# numbers of a run (speed, memory, even the loss at the 4th decimal) depend on these versions and
# this hardware. `python -m tunebook env` prints the same thing.

# %%
from tunebook.environment import environment_report, format_report

print(format_report(environment_report()))

# %% [markdown]
# ## 2. Device and precision, with the reason
#
# tunebook makes both decisions in `tunebook.environment` and prints them at the start of every run:
#
# - **device**: a CUDA GPU when one is visible, else the CPU. (Apple's MPS is not picked: bitsandbytes,
#   needed for 4/8-bit, does not support it.)
# - **precision** (the number format of the matmuls): **bf16** wherever the hardware runs it fast —
#   it has fp32's range, so no loss scaling is needed, at half the bytes; **fp16** only on older CUDA
#   GPUs without bf16 (T4, V100), with loss scaling; **fp32** on CPUs without bf16 instructions,
#   where bf16 would be emulated and *slower*.
#
# `train.precision: auto` (the default in every config) uses this decision; set `bf16`, `fp16` or
# `fp32` to override it. The plain PyTorch questions behind the decision:

# %%
import torch

from tunebook.environment import choose_device, choose_precision, cpu_flags

print("torch.cuda.is_available():", torch.cuda.is_available())
print("CPU bf16 instructions:", sorted({"avx512_bf16", "amx_bf16"} & cpu_flags()) or "none")
device = choose_device()
precision = choose_precision("auto", device.value)
print("device:   ", device)
print("precision:", precision)

# %% [markdown]
# What this means for a LoRA run here: the frozen base weights are stored in the compute dtype
# (bf16 when the decision is bf16: half the memory, and no re-casting in every step), the LoRA
# matrices A and B stay in fp32 so that small updates are not rounded away, and the matmuls run
# under bf16 autocast. On a GPU the same logic picks bf16 on Ampere or newer (A100, H100, RTX 30xx+)
# and fp16 on older cards.
#
# ## 3. How much memory does training take? The embedded model first
#
# Training memory is a sum of a few terms that follow from the model's *shape*
# (`tunebook.memory`):
#
# | term | full fine-tuning | LoRA / QLoRA |
# |---|---|---|
# | weights | every parameter (2 bytes in bf16) | the same, or ~0.5 byte/param in 4-bit, 1 in 8-bit |
# | adapter | – | r·(d_in + d_out) per adapted layer, fp32 |
# | gradients | one per parameter | only the adapter's |
# | optimizer state | AdamW keeps 2 numbers per trained parameter | only the adapter's |
# | activations | saved for the backward pass; grow with batch × sequence length | same |
# | logits | batch × sequence × vocabulary, and their gradient | same |
#
# We ask for the settings of `configs/smollm2-135m-instruct/lora.yaml` at batch 8 and a generous
# 128 tokens per sequence (the longest example is 118 tokens; padding goes to a multiple of 8).

# %%
from tunebook.memory import GiB, estimate_memory, shape_from_name

shape = shape_from_name("smollm2-135m-instruct")  # reads config.json only; no weights are loaded
print(f"{shape.name}: {shape.num_parameters / 1e6:.1f}M parameters, hidden size {shape.hidden_size}, "
      f"{shape.num_layers} layers, vocabulary {shape.vocab_size:,}")
print(f"LoRA r=16 on all 7 projections trains {shape.lora_parameters(16):,} parameters\n")
print(estimate_memory(shape, "lora", batch_size=8, seq_len=128, device="cpu").breakdown())

# %% [markdown]
# The same estimate for the four methods, as a picture (`tunebook.plots.plot_memory_breakdown`):

# %%
from tunebook.plots import plot_memory_breakdown

small = {method: estimate_memory(shape, method, batch_size=8, seq_len=128, device="cpu")
         for method in ("full", "lora", "lora-8bit", "qlora-4bit")}
plot_memory_breakdown(small, title="SmolLM2-135M, batch 8 x 128 tokens (CPU, no overhead)")

# %% [markdown]
# For a 135M-parameter model the weights are small; the **activations** and the **logits** dominate
# (SmolLM2's vocabulary has 49,152 entries, so each trained token produces 49,152 logits, and
# their gradient is as big again; tunebook computes the loss over them in chunks, so no full fp32
# copy of them is made: `tunebook.activations`). That is why quantizing the base saves little here, and why 03 measures
# peak memories close to each other. On a CPU the measured peak (the process's resident memory)
# also includes Python and the libraries, about 0.5–1 GB, which the estimate leaves out.
#
# The tensors are predicted within about 15 % (checked against the bytes autograd saves for
# backward). A CPU process's peak resident memory measured 1.05× the estimate for SmolLM2 at batch
# 8 × 488 in fp32 (benchmarks/README.md), and up to about **twice** it in earlier `make bench` runs,
# before tunebook set glibc to return freed tensors to the OS (`train.release_host_memory`): on a
# CPU, leave room for up to 2×.
#
# ## 4. Which GPU for which model?
#
# Big models change the picture: weights, gradients and optimizer state dominate, and the method
# decides whether a run fits at all. A 7B model at 2,048 tokens, batch 1, gradient checkpointing on:

# %%
shape_7b = shape_from_name("7b")
big = {method: estimate_memory(shape_7b, method, batch_size=1, seq_len=2048, gradient_checkpointing=True)
       for method in ("full", "lora", "lora-8bit", "qlora-4bit")}
plot_memory_breakdown(big, title="7B, batch 1 x 2,048 tokens, gradient checkpointing (GPU)")

# %% [markdown]
# One row per model and method; ✓ means the estimate is at most 90 % of the GPU's memory
# (fragmentation and spikes need the rest).

# %%
from tunebook.memory import format_table, gpu_fit_table

print(format_table(gpu_fit_table(("1b", "7b", "13b", "70b"), gpus_gib=(16, 24, 40, 80))))

# %% [markdown]
# How to read it:
#
# - **Full fine-tuning** pays gradients and AdamW state for *every* parameter: even 7B needs an
#   80 GB card (and 70B needs several).
# - **LoRA** keeps the bf16 weights (2 bytes/param) but trains well under 1 % of the parameters:
#   7B fits a 24 GB card, 13B a 40 GB card.
# - **8-bit** halves the weights again; **QLoRA** (4-bit NF4) quarters them: 13B fits 16 GB, and
#   70B fits a single 80 GB GPU — the result that made QLoRA famous.
#
# ## 5. Your model, your GPU
#
# Change the four values below and re-run the cell. `MY_MODEL` can be a preset (`1b`, `7b`, `8b`,
# `13b`, `70b`), a size (`"3B"`, `"350M"`), an embedded model, a local model folder, or a Hub id such as
# `"Qwen/Qwen2.5-7B"` (that one needs internet to read its config). The command line does the same:
# `tunebook estimate --model 7b --method qlora-4bit --seq-len 2048 --gradient-checkpointing`.

# %%
from tunebook.memory import FIT_HEADROOM

MY_MODEL = "7b"      # preset, size, embedded model, local folder or Hub id
MY_GPU_GIB = 24      # memory of your GPU in GiB
MY_SEQ_LEN = 2048    # tokens per example (01_data_prep shows how to measure your data)
MY_BATCH = 1         # examples per step (per GPU)

my_shape = shape_from_name(MY_MODEL)
print(f"{my_shape.name}: {my_shape.num_parameters / 1e9:.2f}B parameters")
for method in ("full", "lora", "lora-8bit", "qlora-4bit"):
    est = estimate_memory(my_shape, method, batch_size=MY_BATCH, seq_len=MY_SEQ_LEN, gradient_checkpointing=True)
    verdict = "fits" if est.total <= FIT_HEADROOM * MY_GPU_GIB * GiB else "does NOT fit"
    print(f"  {method:<11}{est.total / GiB:7.1f} GiB  -> {verdict} in {MY_GPU_GIB} GiB")

# %% [markdown]
# ## 6. When it does not fit
#
# Start from a run that does not fit a 16 GB GPU (LoRA on a 7B model, batch 4 × 2,048 tokens, no
# gradient checkpointing) and apply the usual levers one at a time, in the order you would try them:

# %%
levers = [
    ("LoRA, batch 4 x 2048 tokens (start)", {}),
    ("+ gradient checkpointing", {"gradient_checkpointing": True}),
    ("+ batch 1 with 4 accumulation steps", {"batch_size": 1}),
    ("+ sequences of 1024 tokens", {"seq_len": 1024}),
    ("+ QLoRA (4-bit base)", {"method": "qlora-4bit"}),
]
settings = {"method": "lora", "batch_size": 4, "seq_len": 2048, "gradient_checkpointing": False}
for label, change in levers:
    settings.update(change)
    print(f"{estimate_memory(shape_7b, **settings).total / GiB:6.1f} GiB  {label}")

# %% [markdown]
# What each lever costs, and the config key that pulls it:
#
# - **Gradient checkpointing** (`train.gradient_checkpointing: true`; the default `auto` turns it on
#   for models of 5B parameters and more, and for any run whose longest batch is estimated to need
#   more than 75 % of the free memory): keep only each layer's input and recompute the rest during
#   the backward pass. Activations shrink by ~10–30×; steps get ~30 % slower on GPUs (a widely quoted
#   figure: one extra forward pass per step), 2–13 % measured here on a CPU (benchmarks/README.md).
# - **Smaller batch with gradient accumulation** (`train.per_device_batch_size: 1`,
#   `train.gradient_accumulation_steps: 4`): the optimizer still sees the gradient of 4 examples,
#   so training behaves the same; only activations and logits shrink.
# - **Shorter sequences** (`data.max_length`): activations and logits scale with the length.
#   tunebook drops (and counts) training examples that are too long instead of cutting their
#   answers; check the length histogram in 01 first — cutting the long tail is cheap, cutting the
#   middle loses data.
# - **QLoRA** (`model.quantization: 4bit`, see `qlora-4bit.yaml`): weights ~4× smaller, steps slower
#   (every matmul dequantizes its weights); quality close to LoRA's (03 measures it).
# - Still too big: a GPU with more memory, several GPUs (`accelerate launch` with FSDP/DeepSpeed,
#   see 02 and `docs/scaling.md`), or a smaller model.
#
# ## Exercises
#
# Three levels: ★ applies what the notebook showed, ★★ combines it, ★★★ asks you to find something
# out. Each solution is in the collapsed cell below the exercise (click to expand), with its output.
#
# **★ 1. An 8B model on a 16 GB GPU.** Which methods fit for `meta-llama/Meta-Llama-3-8B`'s shape
# (preset `8b`) at 1,024 tokens, batch 2, gradient checkpointing on?

# %% jupyter={"source_hidden": true} tags=["solution"]
shape_8b = shape_from_name("8b")
for method in ("full", "lora", "lora-8bit", "qlora-4bit"):
    est = estimate_memory(shape_8b, method, batch_size=2, seq_len=1024, gradient_checkpointing=True)
    print(f"{method:<11}{est.total / GiB:6.1f} GiB  {'fits' if est.total <= FIT_HEADROOM * 16 * GiB else 'no'}")

# %% [markdown]
# **★★ 2. The biggest lever depends on the model.** For the 7B run of section 6 and for the 135M
# model at batch 8 × 512 tokens, apply each lever *alone* to the starting settings. Which single
# change saves the most in each case, and why?

# %% jupyter={"source_hidden": true} tags=["solution"]
def lever_savings(model_shape, start: dict) -> dict[str, float]:
    base = estimate_memory(model_shape, **start).total
    alone = {"checkpointing": {"gradient_checkpointing": True}, "batch 1": {"batch_size": 1},
             "half the tokens": {"seq_len": start["seq_len"] // 2}, "QLoRA": {"method": "qlora-4bit"}}
    return {name: (base - estimate_memory(model_shape, **{**start, **change}).total) / GiB
            for name, change in alone.items()}


start = {"method": "lora", "batch_size": 4, "seq_len": 2048, "gradient_checkpointing": False}
print("7B   saves (GiB):", {k: round(v, 1) for k, v in lever_savings(shape_7b, start).items()})
start_small = {"method": "lora", "batch_size": 8, "seq_len": 512, "gradient_checkpointing": False, "device": "cpu"}
print("135M saves (GiB):", {k: round(v, 2) for k, v in lever_savings(shape, start_small).items()})
# 7B: without checkpointing the activations dominate, so checkpointing saves the most; QLoRA saves
# part of the weights. 135M: the weights are tiny, so QLoRA saves almost nothing; what scales with
# batch x tokens (activations, logits) is everything, so the batch saves the most.

# %% [markdown]
# **★★★ 3. When do the logits outgrow the weights?** For the 135M model (LoRA, batch 8, bf16
# weights), find the shortest sequence length at which the `logits` term is larger than the
# `weights` term. What does that say about fine-tuning small models with large vocabularies on
# long texts?

# %% jupyter={"source_hidden": true} tags=["solution"]
for seq_len in range(32, 4097, 32):
    est = estimate_memory(shape, "lora", batch_size=8, seq_len=seq_len, device="cpu")
    if est.logits > est.weights:
        print(f"logits ({est.logits / GiB:.2f} GiB) > weights ({est.weights / GiB:.2f} GiB) from {seq_len} tokens")
        break
# From about a hundred tokens per example on, a 49k-entry vocabulary costs more memory than the
# whole model: computing the loss only where the answer is (02) and shorter sequences matter more
# than quantization for small models.

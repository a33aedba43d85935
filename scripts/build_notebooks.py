"""Generate notebooks/*.ipynb from the cell texts below (sources only, no outputs).

    python scripts/build_notebooks.py            # write all seven notebooks
    python scripts/build_notebooks.py 02 05      # only these
    python scripts/run_notebooks.py              # then execute them in place (what is committed)

When a notebook's code cells are unchanged, its executed outputs are kept (markdown-only edits need
no re-run); otherwise the notebook is written without outputs: run it again.

The notebooks are the product; this file is only a convenient way to edit them as text. Each
notebook: "What you will learn", a papermill ``parameters`` cell (``SMOKE = False``), the setup
cell, the stage's narrative and calls, and "Exercises". Cells separated by a line ``# %% [md]``
(markdown) or ``# %%`` (code).
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parent.parent
SETUP = '''\
# Setup: work from the repository root (config paths such as data/extraction are relative to it),
# and hide library warnings and progress bars so the outputs stay readable.
from pathlib import Path

from tunebook.notebook import use_repo_root

ROOT = use_repo_root()'''

NOTEBOOKS: dict[str, str] = {}

NOTEBOOKS["00_setup"] = r'''
# %% [md]
# 00 · Setup: your machine, its number format, and whether a model fits

**What you will learn**

- which library versions and hardware tunebook sees, and how it decides the **device** and the
  **precision** (bf16 / fp16 / fp32) — always with the reason;
- how to **predict the memory** of a fine-tuning run from the model's shape alone, before you load
  anything or rent a GPU;
- which method (full fine-tuning, LoRA, 8-bit LoRA, QLoRA) fits which GPU for 1B to 70B models;
- what to change when a run does not fit: QLoRA, gradient checkpointing, shorter sequences, a
  smaller batch with gradient accumulation.

Everything here is cheap: no model is loaded (the estimator reads only the model's config).

# %% parameters
SMOKE = False  # papermill sets True for a quick check; nothing heavy runs in this notebook anyway

# %%
{SETUP}

# %% [md]
## 1. The environment report

Every training run saves this report as `environment.json` in its run folder, because the
numbers of a run (speed, memory, even the loss at the 4th decimal) depend on these versions and
this hardware. `python -m tunebook env` prints the same thing.

# %%
from tunebook.environment import environment_report, format_report

print(format_report(environment_report()))

# %% [md]
## 2. Device and precision, with the reason

tunebook makes both decisions in `tunebook.environment` and prints them at the start of every run:

- **device**: a CUDA GPU when one is visible, else the CPU. (Apple's MPS is not picked: bitsandbytes,
  needed for 4/8-bit, does not support it.)
- **precision** (the number format of the matmuls): **bf16** wherever the hardware runs it fast —
  it has fp32's range, so no loss scaling is needed, at half the bytes; **fp16** only on older CUDA
  GPUs without bf16 (T4, V100), with loss scaling; **fp32** on CPUs without bf16 instructions,
  where bf16 would be emulated and *slower*.

`train.precision: auto` (the default in every config) uses this decision; set `bf16`, `fp16` or
`fp32` to override it.

# %%
from tunebook.environment import choose_device, choose_precision

device = choose_device()
precision = choose_precision("auto", device.value)
print("device:   ", device)
print("precision:", precision)

# %% [md]
What this means for a LoRA run here: the frozen base weights are stored in the compute dtype
(bf16 when the decision is bf16: half the memory, and no re-casting in every step), the LoRA
matrices A and B stay in fp32 so that small updates are not rounded away, and the matmuls run
under bf16 autocast. On a GPU the same logic picks bf16 on Ampere or newer (A100, H100, RTX 30xx+)
and fp16 on older cards.

## 3. How much memory does training take? The embedded model first

Training memory is a sum of a few terms that follow from the model's *shape*
(`tunebook.memory`):

| term | full fine-tuning | LoRA / QLoRA |
|---|---|---|
| weights | every parameter (2 bytes in bf16) | the same, or ~0.5 byte/param in 4-bit, 1 in 8-bit |
| adapter | – | r·(d_in + d_out) per adapted layer, fp32 |
| gradients | one per parameter | only the adapter's |
| optimizer state | AdamW keeps 2 numbers per trained parameter | only the adapter's |
| activations | saved for the backward pass; grow with batch × sequence length | same |
| logits | batch × sequence × vocabulary, fp32 | same |

We ask for the settings of `configs/smollm2-135m-instruct/lora.yaml` at batch 8 and a generous
128 tokens per sequence (the longest example is 118 tokens; padding goes to a multiple of 8).

# %%
from tunebook.memory import GiB, estimate_memory, shape_from_name

shape = shape_from_name("smollm2-135m-instruct")  # reads config.json only; no weights are loaded
print(f"{shape.name}: {shape.num_parameters / 1e6:.1f}M parameters, hidden size {shape.hidden_size}, "
      f"{shape.num_layers} layers, vocabulary {shape.vocab_size:,}")
print(f"LoRA r=16 on all 7 projections trains {shape.lora_parameters(16):,} parameters\n")
print(estimate_memory(shape, "lora", batch_size=8, seq_len=128, device="cpu").breakdown())

# %%
for method in ("full", "lora", "lora-8bit", "qlora-4bit"):
    total = estimate_memory(shape, method, batch_size=8, seq_len=128, device="cpu").total
    print(f"{method:<11}{total / GiB:6.2f} GiB")

# %% [md]
For a 135M-parameter model the weights are small; the **activations** and the **logits** dominate
(SmolLM2's vocabulary has 49,152 entries, so each token produces 49,152 fp32 logits, and their
gradient is as big again). That is why quantizing the base saves little here, and why 02/03 measure
peak memories close to each other. On a CPU the measured peak (the process's resident memory)
also includes Python and the libraries, about 0.5–1 GB, which the estimate leaves out.

The tensors are predicted within about 15 % (checked against the bytes autograd saves for
backward). A CPU process's peak resident memory measured about **twice** the estimate in
`make bench` (allocator slack, transient copies, loading): on a CPU, plan for 2×.

## 4. Which GPU for which model?

Big models change the picture: weights, gradients and optimizer state dominate, and the method
decides whether a run fits at all. One row per model and method, for 2,048-token sequences,
batch 1 and gradient checkpointing on; ✓ means the estimate is at most 90 % of the GPU's memory
(fragmentation and spikes need the rest).

# %%
from tunebook.memory import format_table, gpu_fit_table

print(format_table(gpu_fit_table(("1b", "7b", "13b", "70b"), gpus_gib=(16, 24, 40, 80))))

# %% [md]
How to read it:

- **Full fine-tuning** pays gradients and AdamW state for *every* parameter: even 7B needs an
  80 GB card (and 70B needs several).
- **LoRA** keeps the bf16 weights (2 bytes/param) but trains well under 1 % of the parameters:
  7B fits a 24 GB card, 13B a 40 GB card.
- **8-bit** halves the weights again; **QLoRA** (4-bit NF4) quarters them: 13B fits 16 GB, and
  70B fits a single 80 GB GPU — the result that made QLoRA famous.

## 5. Your model, your GPU

Change the four values below and re-run the cell. `MY_MODEL` can be a preset (`1b`, `7b`, `8b`,
`13b`, `70b`), a size (`"3B"`, `"350M"`), an embedded model, a local model folder, or a Hub id such as
`"Qwen/Qwen2.5-7B"` (that one needs internet to read its config).

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

# %% [md]
## 6. When it does not fit

Start from a run that does not fit a 16 GB GPU (LoRA on a 7B model, batch 4 × 2,048 tokens, no
gradient checkpointing) and apply the usual levers one at a time, in the order you would try them:

# %%
shape_7b = shape_from_name("7b")
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

# %% [md]
What each lever costs, and the config key that pulls it:

- **Gradient checkpointing** (`train.gradient_checkpointing: true`; the default `auto` turns it on
  for models of 5B parameters and more): keep only each layer's input and recompute the rest during
  the backward pass. Activations shrink by ~10–30×, steps get ~30 % slower.
- **Smaller batch with gradient accumulation** (`train.per_device_batch_size: 1`,
  `train.gradient_accumulation_steps: 4`): the optimizer still sees the gradient of 4 examples,
  so training behaves the same; only activations and logits shrink, steps are not slower per example.
- **Shorter sequences** (`data.max_length`): activations and logits scale with the length.
  tunebook drops (and counts) examples that are too long instead of cutting their answers; check
  the length histogram in 01 first — cutting the long tail is cheap, cutting the middle loses data.
- **QLoRA** (`model.quantization: 4bit`, see `qlora-4bit.yaml`): weights ~4× smaller, steps slower
  (every matmul dequantizes its weights); quality close to LoRA's (03 measures it).
- Still too big: a GPU with more memory, several GPUs (`accelerate launch` with FSDP/DeepSpeed), or
  a smaller model.

## Exercises

1. Set `MY_MODEL`/`MY_GPU_GIB` to the model and GPU you want to use. Which methods fit? What is the
   largest `MY_SEQ_LEN` that still fits with QLoRA?
2. In section 6, swap the order of the levers. Which single change saves the most for a 7B model?
   Which one for the 135M model of section 3 (hint: look at its biggest terms)?
3. Estimate the 135M model at `seq_len=2048`. Which term grows fastest, and why does it matter
   more for small models with large vocabularies?
4. `estimate_memory(..., inference=True)` estimates generation instead of training. How much
   smaller is serving a 7B model in 4-bit than training it with QLoRA?
'''

NOTEBOOKS["01_data_prep"] = r'''
# %% [md]
# 01 · Data preparation: from JSONL rows to the tokens the loss sees

**What you will learn**

- how tunebook **loads** a dataset (a folder of split files, one file, or a Hub id) and maps your
  column names to a recipe's *roles*;
- how it **validates** every row before any model loads, and what an error looks like;
- how **splits** are kept or carved (stratified for classification);
- how an example becomes a **chat prompt** (the same function serves training and inference);
- how **tokenization** builds completion-only labels, and exactly **which tokens are trained**;
- how the **length histogram** picks `max_length`, and how to **save** the processed dataset.

Main example: the entity-extraction data (`data/extraction`) with
`configs/smollm2-135m-instruct/lora.yaml`. At the end, briefly: the news-topic classification data
and the instruction-following (Nimbus Support) data.

# %% parameters
SMOKE = False  # True: a quick check (32 training rows are tokenized instead of 1,300)

# %%
{SETUP}

# %% [md]
## The config

The `data` section of a run config says where the data is and how to read it. `recipe:
instruction` needs an `output` (the answer) and an instruction; this data has no instruction
column, so one fixed `instruction` is used for every row, and `columns` maps our column names
to the recipe's roles (`sentence` plays the role `input`).

# %%
import yaml

from tunebook.config import config_to_dict
from tunebook.notebook import notebook_config

config = notebook_config("configs/smollm2-135m-instruct/lora.yaml", SMOKE, name="data-prep")
RUN_DIR = Path(config.train.output_dir)  # plots and the processed dataset go here
print(yaml.safe_dump(config_to_dict(config)["data"], sort_keys=False, width=100))

# %% [md]
## 1. Load

`load_raw` reads a folder of split files (`train.jsonl`, `validation.jsonl`, `test.jsonl`; CSV,
JSON and Parquet work too), a single file (it becomes the `train` split) or a Hub dataset id.
It also returns where each split came from, so that error messages can name the file.

# %%
from tunebook.data import load_raw

raw, sources = load_raw(config.data.path)
print(sources)
raw

# %%
raw["train"].to_pandas().head(5)

# %% [md]
## 2. Inspect

Look before you train: what is in the data, how balanced it is, how long the texts are.

# %%
train_df = raw["train"].to_pandas()
print("rows per domain:", train_df["domain"].value_counts().to_dict())
print("entities per sentence:", train_df["entities"].map(len).value_counts().sort_index().to_dict())
print("words per sentence: mean", round(train_df["sentence"].str.split().map(len).mean(), 1))
print("an answer:", train_df["output"][0])

# %% [md]
## 3. Validate

`select_roles` renames our columns to the recipe's roles and drops the others; `validate` checks
every row: no empty split, no empty or non-text answer, labels inside the label set
(classification), well-formed chat messages, and **no example shared between train and
validation/test** (a leaked test row makes the evaluation meaningless). Duplicates inside a split
are counted as warnings.

# %%
from tunebook.data import select_roles, validate

data = select_roles(raw, sources, config.data)
report = validate(data, sources, config.data)
print(data)
print(report)

# %% [md]
When something is wrong, validation stops with a `DataValidationError` that names the file, the
row (counted from 1, like a line number) and the field, and says how to fix it. Two deliberately
broken cases: an in-memory dataset with an empty answer, and a config whose `columns` points the
`output` role at a column that does not exist. (We catch the errors and print them; in a real run they stop the run before any model
is loaded.)

# %%
from datasets import Dataset, DatasetDict

from tunebook.config import apply_overrides
from tunebook.data import DataValidationError

good_row = {"sentence": "Ada Lovelace visited Paris in 1843.", "output": train_df["output"][0]}
empty_answer = DatasetDict(train=Dataset.from_list([good_row, {"sentence": "The mayor spoke on Tuesday.", "output": ""}]))
wrong_column = apply_overrides(config, {"data.columns": {"input": "sentence", "output": "answer"}}).data
for bad_data, data_config in ((empty_answer, config.data), (empty_answer, wrong_column)):
    try:
        where = {"train": "my_rows.jsonl"}
        validate(select_roles(bad_data, where, data_config), where, data_config)
    except DataValidationError as error:
        print(f"DataValidationError: {error}\n")

# %% [md]
## 4. Split

The extraction data ships its own validation and test files, so they are kept as they are. When
a dataset has only a training file, `split_dataset` carves validation and test from it —
deterministically for a seed, and **stratified by label** for classification, so that a small
dataset cannot lose a class from its test set. Here on the news-topic training file alone:

# %%
from collections import Counter

from tunebook.config import load_config
from tunebook.data import split_dataset

news_config = load_config("configs/minilm-l6/lora.yaml")
news_raw, news_sources = load_raw("data/news_topics/train.jsonl")  # a single file: train only
news_splits = split_dataset(select_roles(news_raw, news_sources, news_config.data), news_config.data)
for split, dataset in news_splits.items():
    print(f"{split:<11}{len(dataset):>4} rows  {dict(sorted(Counter(dataset['label']).items()))}")

# %% [md]
`load_and_validate` runs steps 1–4 in one call (and applies `data.max_train_examples`, which
smoke mode uses to shrink the training split). Training and evaluation call it too.

# %%
from tunebook.data import load_and_validate

splits, report = load_and_validate(config.data)
print(report)

# %% [md]
## 5. Format: the chat template

SmolLM2-Instruct was trained on conversations in its own chat format. Fine-tuning data must use
the same format, or the model has to learn it from scratch. `prompt_messages` turns an example into
messages (system prompt, then the user turn: instruction + input) and `build_prompt` renders them
with the tokenizer's chat template, ending where the assistant's answer begins. **The same
function builds the prompt at inference**, so training and serving cannot drift apart.

# %%
from tunebook.formatting import answer_text, build_prompt, prompt_messages
from tunebook.models import load_tokenizer

tokenizer = load_tokenizer(config.model.name)
example = splits["train"][0]
messages = prompt_messages(example, config.data)
prompt = build_prompt(tokenizer, messages)
print(messages, "\n")
print(prompt + answer_text(example, config.data) + tokenizer.eos_token)

# %% [md]
## 6. Tokenize, with completion-only labels

An example becomes `prompt_ids + answer_ids + [end_id]`. The labels (what the loss compares the
model's predictions with) are `-100` — ignored — on every prompt token: the model learns to
*answer*, not to reproduce the question. The answer **and the end token** (`<|im_end|>`) are
trained, so the model learns to *stop*. Labels are built from positions, never from
`input_ids == pad_token_id`: SmolLM2 pads with its end token, and masking by id would hide the
real end token too (the model would then never stop generating).

# %%
from tunebook.formatting import IGNORE_INDEX, tokenize_example

encoded = tokenize_example(example, tokenizer, config.data)
n_prompt = encoded["labels"].count(IGNORE_INDEX)
print(f"{encoded['length']} tokens: {n_prompt} prompt tokens (label -100) + "
      f"{encoded['length'] - n_prompt} trained answer tokens (end token included)")
print("last 4 tokens:", [tokenizer.decode([t]) for t in encoded["input_ids"][-4:]])
print("their labels: ", encoded["labels"][-4:])

# %% [md]
## 7. Exactly which tokens are trained

`show_trained_tokens` decodes the example and highlights the trained tokens (green); grey tokens
are only context. If the answer were cut off, or the end token were not green, `tokenize_dataset`
would have refused the example (`check_labels`).

# %%
from tunebook.formatting import show_trained_tokens
from tunebook.notebook import show_html

show_html(show_trained_tokens(encoded["input_ids"], encoded["labels"], tokenizer, as_html=True))

# %% [md]
The same as plain text (trained tokens between ⟦ ⟧), handy in a terminal or a log:

# %%
print(show_trained_tokens(encoded["input_ids"], encoded["labels"], tokenizer))

# %% [md]
## 8. Token lengths and `max_length`

Every token costs compute and memory (activations and logits scale with the sequence length).
`data.max_length: null` picks the smallest multiple of 8 that fits the longest training example,
so nothing is cut. With a set value, longer examples are **dropped and counted**, never truncated
(a truncated answer would teach the model to stop mid-JSON). The histogram is saved as a PNG in
the run folder too.

# %%
from tunebook.formatting import length_stats, suggest_max_length, tokenize_dataset
from tunebook.plots import plot_length_histogram

tokenized = tokenize_dataset(splits, tokenizer, config.data)
lengths = tokenized["train"]["length"]
max_length = suggest_max_length(lengths)
print({k: round(v, 1) for k, v in length_stats(lengths, max_length).items()})
print(f"with max_length=96, {length_stats(lengths, 96)['over_max_length']} training examples would be dropped")
fig = plot_length_histogram(lengths, max_length, RUN_DIR / "length_histogram.png")
print(f"saved {RUN_DIR / 'length_histogram.png'}")

# %% [md]
## 9. Save the processed dataset

`prepare_dataset` runs all of the above and writes what the model will see: the tokenized
dataset (`save_to_disk` format), the statistics and the histogram. `python -m tunebook prepare
CONFIG` does the same from the command line. Training does not need this folder (it prepares in
memory in seconds), but it is the place to look when a run behaves strangely.

# %%
from datasets import load_from_disk

from tunebook.notebook import close_figures
from tunebook.prepare import prepare_dataset

result = prepare_dataset(config, RUN_DIR / "prepared")
close_figures()  # it drew the same histogram as above and saved it as PNG
print(sorted(p.name for p in result["out_dir"].iterdir()))
load_from_disk(str(result["out_dir"] / "dataset"))

# %% [md]
## 10. The other two datasets, briefly

**Classification** (`data/news_topics`, used in 06 with MiniLM): the recipe `classification`
needs `text` and `label`. There is no prompt and no label masking: the whole text is the input,
and a new classification head predicts one of the four labels (ids follow the order of
`data.labels`).

# %%
news_data, news_report = load_and_validate(news_config.data)
print(news_report)
news_tokenizer = load_tokenizer(news_config.model.name)
news_tokenized = tokenize_dataset(news_data, news_tokenizer, news_config.data, news_report["labels"])
row = news_tokenized["train"][0]
print(news_data["train"][0])
print("label id", row["label"], "=", news_report["labels"][row["label"]])
print(news_tokenizer.convert_ids_to_tokens(row["input_ids"]))

# %% [md]
**Instruction following** (`data/instructions`, used in 05 for a second adapter): customer
questions about a fictional weather station, answered in a house style. Here every row has its own
`instruction`, and some have an `input` (an error code or a customer message), which goes into
the same user turn after a blank line. The overrides live in `tunebook.notebook.INSTRUCTIONS_OVERRIDES`.

# %%
from tunebook.notebook import INSTRUCTIONS_OVERRIDES

instructions_config = apply_overrides(config, INSTRUCTIONS_OVERRIDES)
instructions, instructions_report = load_and_validate(instructions_config.data)
print(instructions_report)
row = next(r for r in instructions["train"] if r["input"])  # one of the rows with an input
encoded = tokenize_example(row, tokenizer, instructions_config.data)
show_html(show_trained_tokens(encoded["input_ids"], encoded["labels"], tokenizer, as_html=True))

# %% [md]
## Exercises

1. Add a row to `empty_answer` whose `sentence` is a sentence of `data/extraction/test.jsonl`.
   Which check fires if you put that dataset in the `validation` split and a copy in `train`?
2. Set `data.system_prompt` to `None` (SmolLM2's default system prompt comes back). How many
   tokens longer is every example, and what does that cost over 150 steps of batch 8?
3. Re-run section 8 with `max_length=96` through `apply_overrides(config, {"data.max_length": 96})`
   and `tokenize_dataset`. Which examples are dropped, and what is printed?
4. Look at the trained tokens of an instruction example: is the `— Nimbus Support` signature
   trained? Why does that matter for exact-match evaluation (see 04)?
'''

NOTEBOOKS["02_lora_training"] = r'''
# %% [md]
# 02 · LoRA training: SmolLM2-135M learns to extract entities as JSON

**What you will learn**

- what the LoRA knobs do — `r`, `alpha`, `dropout`, `target_modules`, the learning rate — and why
  `configs/smollm2-135m-instruct/lora.yaml` uses the values it does;
- how many parameters LoRA trains, and how to count them before loading anything;
- how `tunebook.train.run_training` trains an adapter and what its run folder holds;
- how to read the loss curve and the run metrics (trained tokens/s, peak memory);
- how the tuned model answers compared with the base model.

On a 2-core CPU the full run (150 steps of batch 8) takes about 7 minutes on a quiet machine.

# %% parameters
SMOKE = False  # True: 2 steps of batch 2 on 32 examples, output under runs/smoke/

# %%
{SETUP}

# %% [md]
## The config and its knobs

LoRA freezes every weight matrix W0 of the model and learns a low-rank update beside it:
`h = W0·x + (alpha/r)·B·A·x`, with A (r × d_in, random at start) and B (d_out × r, zero at start,
so step 0 is exactly the base model). Only A and B are trained.

# %%
import yaml

from tunebook.config import config_to_dict
from tunebook.notebook import notebook_config

config = notebook_config("configs/smollm2-135m-instruct/lora.yaml", SMOKE)
print(yaml.safe_dump({k: config_to_dict(config)[k] for k in ("model", "lora", "train")}, sort_keys=False))

# %% [md]
| knob | value | what it does | why this value |
|---|---|---|---|
| `lora.r` | 16 | rank of the update: its capacity | 8–16 suits a narrow task such as extraction; a larger r rarely helps with ~1.3k examples |
| `lora.alpha` | 32 | the update is scaled by alpha/r | alpha = 2r is the common default; keeping alpha/r fixed when you change r keeps the effective step size similar |
| `lora.dropout` | 0 | dropout on the LoRA input only | with dropout > 0, peft keeps a dropped-out copy of every adapted input: 3.8 instead of 3.0 s/step here (measured), and less than one epoch over 1.3k examples does not overfit. Use 0.05–0.1 for several epochs on small data |
| `lora.target_modules` | auto | which linear layers get adapters | `auto` = all attention and MLP projections (q, k, v, o, gate, up, down): adapting all of them beats attention-only at the same parameter budget (QLoRA paper) |
| `train.learning_rate` | 1e-3 | AdamW step size | LoRA tolerates ~10× the rate of full fine-tuning; on this small model and a 150-step budget 1e-3 beat the common 2e-4 by far (test F1 0.93 vs 0.21, measured with an earlier, longer instruction) |
| `train.max_steps` | 150 | optimizer steps | ~1 epoch of 1,300 examples at batch 8. Fewer is much worse at this learning rate: 120 steps reached test F1 0.79 and exact match 0.34, against 0.92 and 0.78 for 150 (both measured with an earlier, longer instruction) |
| `train.gradient_checkpointing` | auto | recompute activations in the backward pass instead of storing them | `auto` turns it on from 5B parameters; at 135M it would only cost ~30 % speed (the decision is printed) |
| `train.lr_scheduler`, `warmup_ratio` | cosine, 0.05 | warm up over the first 5 % of steps, then decay | the usual LoRA recipe; warm-up protects the fresh adapter from large first steps |

## How many parameters does LoRA train?

An adapted layer d_in → d_out gets r·(d_in + d_out) parameters instead of d_in·d_out. The model's
shape gives the count before anything is loaded (`tunebook.memory.ModelShape`):

# %%
from tunebook.memory import shape_from_name

shape = shape_from_name(config.model.name)
for r in (4, 8, 16, 32, 64):
    n = shape.lora_parameters(r)
    print(f"r={r:<3}{n:>11,} trainable parameters ({100 * n / shape.num_parameters:.2f} % of {shape.num_parameters:,})")
print(f"r=16 on q_proj and v_proj only: {shape.lora_parameters(16, ['q_proj', 'v_proj']):,}")

# %% [md]
Change any knob here with dotted keys, exactly as `--set` does on the command line
(`python -m tunebook train configs/smollm2-135m-instruct/lora.yaml --set lora.r=8`). The config is
checked again: a typo such as `lora.rank` is an error that suggests `lora.r`.

# %%
from tunebook.config import apply_overrides

KNOBS = {}  # e.g. {"lora.r": 8, "lora.alpha": 16, "train.learning_rate": 1e-4, "train.max_steps": 60}
config = apply_overrides(config, KNOBS)

# %% [md]
## Train

`run_training(config)` prints its decisions (device, precision, optimizer) with reasons, checks
and tokenizes the data *before* loading the model (a bad file fails in seconds), loads SmolLM2
with its frozen weights in the compute dtype, adds the adapters (the `LoRA r=16 ...` line shows
the trainable parameters, the same number as above), and trains with the `transformers` Trainer.
The Trainer prints the training loss every 10 steps and the validation loss every 75 steps (one
line each).

# %%
from tunebook.notebook import close_figures
from tunebook.train import run_training

result = run_training(config)
close_figures()  # the run saved its plots as PNG files; they are shown below

# %% [md]
## The run folder and the loss curve

Everything about the run is in its folder: the adapter (a few MB of safetensors), the resolved
config, the environment, the metrics, the plots, and Trainer checkpoints for `--resume`.

# %%
from tunebook.notebook import show_image

print(sorted(p.name for p in result.run_dir.iterdir()))
print(sorted(p.name for p in result.adapter_dir.iterdir()))
show_image(result.run_dir / "loss_curve.png")

# %% [md]
Reading the curve: the training loss falls fast in the first ~40 steps (the model learns the JSON
layout, copying spans and when to stop) and then slowly (which words are entities). The validation
loss following it down means the adapter generalises to sentences it has not seen; a validation
loss that rises while the training loss keeps falling would mean over-fitting (fewer steps, a
smaller `r` or more dropout). A validation loss still falling at the last evaluation means more
steps would still help.

## Run metrics

# %%
m = result.metrics
print(f"steps:             {m['global_step']} in {m['runtime_seconds']:.0f} s ({m['seconds_per_step']:.2f} s/step)")
print(f"trained tokens/s:  {m['trained_tokens_per_second']:.0f} (answer tokens, the ones with a loss)")
print(f"input tokens/s:    {m['input_tokens_per_second']:.0f} (every non-padding token of the forward pass)")
print(f"peak memory:       {m['peak_memory_mb']:.0f} MB ({'GPU allocations' if m['decisions']['device'].startswith('cuda') else 'process resident memory'})")
print(f"final train loss:  {m['final_train_loss']:.4f}; final eval loss: {m['final_eval_loss']}")
for stage, decision in m["decisions"].items():
    print(f"{stage:<10} {decision}")

# %% [md]
*Trained* tokens/s counts only the answer tokens, the ones that carry a loss; *input* tokens/s
counts every token the model processed (prompts included). Both are measured, not estimated.
On a CPU, peak memory is the whole process's resident memory (Python and libraries included); on a
GPU it is the peak of the tensors allocated on the GPU.

## What did the adapter change? A few generations

`load_for_inference` loads the base model and attaches the saved adapter. The prompts are built by
the same `build_prompt` as in training. `model.disable_adapter()` gives the base model's answers
from the same object.

# %%
from tunebook.data import load_and_validate
from tunebook.evaluation import generate
from tunebook.formatting import build_prompt, prompt_messages
from tunebook.inference import load_for_inference

model, tokenizer = load_for_inference(config.model.name, result.adapter_dir)
test = load_and_validate(config.data)[0]["test"].select(range(3))
prompts = [build_prompt(tokenizer, prompt_messages(example, config.data)) for example in test]
tuned = generate(model, tokenizer, prompts, max_new_tokens=config.eval.max_new_tokens)
with model.disable_adapter():
    base = generate(model, tokenizer, prompts, max_new_tokens=config.eval.max_new_tokens)
for example, base_answer, tuned_answer in zip(test, base, tuned):
    print(f"sentence:  {example['input']}\nreference: {example['output']}\nbase:      {base_answer}\ntuned:     {tuned_answer}\n")

# %% [md]
The base model is a general chat model: it restates the sentence, or invents a JSON layout of its
own and repeats it until the token budget runs out. The tuned model answers with the exact JSON layout of the training
data and stops after it.

Now look at the lists: are the spans copied exactly, under the right key? The learning rate
decides this more than anything else at this budget. With 2e-4 instead of 1e-3 (measured on this
job: test F1 0.21 instead of 0.93) the tuned model already wrote the exact layout but left most
lists *empty*: given the opening `["` of a list it copied names correctly, but at the one token per
type that chooses between `[]` and `["` it had not overcome its preference for `[]`. 04 measures
the whole test split, and its exercise 1 reproduces the slow run.

## The same run on one GPU, several GPUs, several machines

Nothing in this notebook is CPU-specific. `run_training` is what `python -m tunebook train CONFIG`
runs, and that command scales by being started through `accelerate launch`, which runs one copy per
GPU; the transformers Trainer inside does the distributed part. In a terminal, from the repository
root:

```bash
# one GPU (bf16 or fp16 and the optimizer are chosen and printed, as here)
python -m tunebook train configs/smollm2-135m-instruct/lora.yaml
# 4 GPUs on one machine, DDP: each GPU trains on its own quarter of every batch
accelerate launch --config_file configs/accelerate/multi_gpu_ddp.yaml --num_processes 4 \
    -m tunebook train configs/smollm2-135m-instruct/lora.yaml
# a model too big for one GPU: FSDP shards it (QLoRA included)
accelerate launch --config_file configs/accelerate/fsdp_qlora.yaml --num_processes 2 \
    -m tunebook train configs/llama-3-8b/qlora-4bit.yaml
# 2 machines x 8 GPUs: the same command on each node, with its own --machine_rank
accelerate launch --config_file configs/accelerate/multi_gpu_ddp.yaml --num_machines 2 \
    --machine_rank 0 --num_processes 16 --main_process_ip 10.0.0.1 --main_process_port 29500 \
    -m tunebook train configs/llama-3-8b/lora.yaml
# no GPU? two CPU processes exercise the same multi-process path (what tests/test_distributed.py runs)
CUDA_VISIBLE_DEVICES= accelerate launch --config_file configs/accelerate/cpu_two_processes.yaml \
    -m tunebook train configs/smollm2-135m-instruct/lora.yaml --set train.max_steps=5
```

Two things change with N processes: the effective batch is `per_device_batch_size ×
gradient_accumulation_steps × N` (divide the accumulation by N to keep the run's results), and
only the main process prints, saves the adapter and writes the metrics. `docs/scaling.md` explains
each launch config, and `configs/llama-3-8b/` holds 7B-class recipes with their memory estimates.

## Exercises

1. Set `KNOBS = {"lora.r": 4, "lora.alpha": 8}` and re-run. How do the trainable parameters, the
   final eval loss and the speed change?
2. Train attention-only adapters: `{"lora.target_modules": ["q_proj", "v_proj"]}`. Compare the
   loss curve with the default. (A name that does not exist, say `"qproj"`, gives an error that
   lists the model's linear layers.)
3. Try `train.learning_rate` 2e-5 and 2e-3. What happens to the loss curve in each case?
4. Interrupt a run, then continue it with `python -m tunebook train CONFIG --resume`.
'''

NOTEBOOKS["03_qlora_training"] = r'''
# %% [md]
# 03 · QLoRA and 8-bit: the same LoRA job with a quantized base

**What you will learn**

- what QLoRA quantizes and what it does not: **NF4** weights, **double quantization**, the
  **compute dtype**, **paged optimizers**;
- how 8-bit (LLM.int8) differs;
- how to train both with `configs/smollm2-135m-instruct/qlora-4bit.yaml` and `lora-8bit.yaml`
  (the same task and knobs as 02, only `model.quantization` differs);
- what the quantized base saves — model footprint, peak memory — and what it costs in speed
  and loss, measured side by side with the LoRA run of 02.

# %% parameters
SMOKE = False  # True: 2 steps of batch 2 per method, output under runs/smoke/

# %%
{SETUP}

# %% [md]
## What gets quantized

LoRA trains only the small A and B matrices; the base weights W0 are read in every step but never
updated. So they can be stored in fewer bits:

- **NF4** (4-bit NormalFloat, `bnb_4bit_quant_type="nf4"`): each block of 64 weights is scaled by
  its largest absolute value and every weight is stored as one of 16 levels. The levels are the
  quantiles of a normal distribution, the shape trained weights have, so they waste fewer levels
  than plain 4-bit integers. About 4× smaller than bf16.
- **Double quantization** (`bnb_4bit_use_double_quant=True`): the per-block scales themselves are
  quantized to 8 bits (0.5 → ~0.13 extra bits per weight; ~3 GB on a 65B model).
- **Compute dtype** (`bnb_4bit_compute_dtype`): NF4 is a storage format only. Each matmul
  dequantizes its weight blocks to this dtype and computes in it; tunebook uses the training
  precision (bf16 where fast, see 00). It decides speed and numerics.
- **Paged optimizers** (`paged_adamw_8bit`): on CUDA, optimizer state lives in memory that the
  driver can page to CPU RAM during the spikes of a long batch, instead of failing with
  out-of-memory. tunebook picks it for QLoRA on CUDA; on CPU there is nothing to page.
- **8-bit (LLM.int8)**: int8 weights with one scale per row; the rare input features with large
  values ("outliers") are computed in fp16 instead. About 2× smaller than bf16.

Only the linear layers inside the transformer blocks are quantized; embeddings, the output head and
the norms stay unquantized, in the compute dtype (bf16 here), like the frozen base of 02. Many
tutorials call peft's `prepare_model_for_kbit_training`, which upcasts them to fp32; tunebook does
not: RMSNorm computes in fp32 internally anyway, the fp32 copy of SmolLM2's embedding alone would
add 57 MB to a 4-bit model of about 110 MB, and FSDP cannot shard a model of mixed dtypes (see
`docs/scaling.md`).

# %%
from tunebook.environment import choose_device
from tunebook.notebook import notebook_config
from tunebook.quantization import make_quantization_config
from tunebook.train import choose_optimizer

nf4 = make_quantization_config("4bit")
print({k: getattr(nf4, k) for k in ("load_in_4bit", "bnb_4bit_quant_type", "bnb_4bit_use_double_quant", "bnb_4bit_compute_dtype")})
print({k: getattr(make_quantization_config("8bit"), k) for k in ("load_in_8bit", "llm_int8_threshold")})
qlora_config = notebook_config("configs/smollm2-135m-instruct/qlora-4bit.yaml", SMOKE)
print("optimizer here:", choose_optimizer(qlora_config, choose_device().value))
print("optimizer on a GPU:", choose_optimizer(qlora_config, "cuda"))

# %% [md]
## Model footprint

`model_memory_bytes` adds up the bytes of every parameter and buffer, packed 4/8-bit weights and
their scales included. Full precision here means the frozen base as LoRA training stores it (bf16).

# %%
import torch

from tunebook.inference import model_memory_bytes
from tunebook.models import load_model

NAME = qlora_config.model.name
footprints = {}
for label, quantization in (("LoRA", None), ("8-bit LoRA", "8bit"), ("QLoRA 4-bit", "4bit")):
    model = load_model(NAME, quantization=quantization, dtype=torch.bfloat16)  # as training loads it
    footprints[label] = model_memory_bytes(model)
    print(f"{label:<12}{footprints[label] / 2**20:7.0f} MB")
    del model

# %% [md]
Less than 4× smaller: SmolLM2's embedding matrix (49,152 × 576, 28M of its 135M parameters) is
not quantized and stays in bf16. For a 7B model the blocks are ~97 % of the weights and
4-bit gets close to the full 4× (see the table in 00).

## Train all three

Each run starts in its own Python process (`python -m tunebook train` on the config): on a CPU,
peak memory is the peak resident memory of the *process*, and it never goes down, so runs in the
same notebook kernel would inherit each other's peak. The LoRA run comes from 02's run folder when
02 has been run; otherwise it is trained here too.

# %%
from tunebook.notebook import read_metrics, train_in_subprocess

lora_config = notebook_config("configs/smollm2-135m-instruct/lora.yaml", SMOKE)
runs = {"LoRA": read_metrics(lora_config.train.output_dir)}
if runs["LoRA"] is None:
    print("no LoRA run from 02: training it")
    runs["LoRA"] = train_in_subprocess(lora_config)
else:
    print(f"LoRA: read {lora_config.train.output_dir}/metrics.json (trained in 02)")

# %%
eightbit_config = notebook_config("configs/smollm2-135m-instruct/lora-8bit.yaml", SMOKE)
runs["8-bit LoRA"] = train_in_subprocess(eightbit_config)

# %%
runs["QLoRA 4-bit"] = train_in_subprocess(qlora_config)

# %% [md]
## Side by side

# %%
from tunebook.notebook import training_comparison

comparison = training_comparison(runs, footprints)
comparison

# %%
import matplotlib.pyplot as plt

fig, ax = plt.subplots(figsize=(6, 3.5))
for label, metrics in runs.items():
    ax.plot([e["step"] for e in metrics["train_loss"]], [e["loss"] for e in metrics["train_loss"]], marker=".", label=label)
ax.set(xlabel="optimizer step", ylabel="train loss", title="Same job, three ways to store the base")
ax.grid(alpha=0.3)
ax.legend()
OUT = Path(qlora_config.train.output_dir).parent / "quantization-comparison"
OUT.mkdir(parents=True, exist_ok=True)
fig.savefig(OUT / "loss_comparison.png", dpi=120, bbox_inches="tight")
comparison.to_csv(OUT / "comparison.csv")

# %% [md]
How to read the table:

- **Model footprint** shrinks as expected, bf16 → int8 → NF4 (in the committed run 257 → 156 →
  106 MB, 41 %); the unquantized embedding matrix (28M parameters, 57 MB in bf16) keeps NF4 above
  a quarter.
- **Peak memory** barely follows the footprint for this small model: as 00 showed, activations and
  the 49k-wide logits (with their fp32 copies in the loss) dominate at 135M parameters, and the
  process's peak also counts Python, the libraries, the data and the loading transient (4-bit and
  8-bit loading read every weight in full precision to quantize it, which is why 8-bit can peak
  *above* LoRA here). The LoRA peak of 02 was measured inside the notebook kernel (a little extra
  for Jupyter). On a 7B+ model on a GPU the weights dominate and QLoRA's saving approaches the
  3–4× of the footprint (see 00).
- **Speed**: compare it only between runs made on the same machine under the same load (the LoRA run
  comes from 02, possibly at another time). Quantized steps are slower — every matmul first dequantizes its weights (4-bit) or
  splits out the outlier columns (8-bit). On a CPU the bitsandbytes kernels are much slower than on
  a GPU, so the gap here is larger than you will see on CUDA.
- **Loss**: the curves lie close to each other; QLoRA ends a little higher. The adapters learn to
  work with the rounded base weights; the QLoRA paper found 4-bit NF4 + LoRA matches 16-bit LoRA
  on its benchmarks.

## Does the 4-bit base cost accuracy?

Loss is only a proxy; the task metric decides. Evaluate the QLoRA adapter the way 04 evaluates
LoRA — greedy decoding on the 150 held-out test sentences, on the 4-bit base it was trained with —
and put it next to the LoRA adapter (04's results when 04 has run, otherwise evaluated here).

# %%
import json

import pandas as pd

from tunebook.evaluation import run_evaluation

lora_results = Path(lora_config.train.output_dir) / "eval" / "results.json"
task_metrics = {
    "LoRA": (json.loads(lora_results.read_text()) if lora_results.is_file()
             else run_evaluation(lora_config, compare_base=False))["tuned"],
    "QLoRA 4-bit": run_evaluation(qlora_config, compare_base=False)["tuned"],
}
columns = ["f1", "precision", "recall", "valid_json_rate", "exact_match", "perplexity"]
pd.DataFrame({label: {c: m[c] for c in columns} for label, m in task_metrics.items()}).T.round(3)

# %% [md]
In the committed run QLoRA reached test F1 0.928 against LoRA's 0.955, with the same valid-JSON
rate, from a base 41 % the size: close, not equal. Most of the gap is in exact match (whole
sentences right), where every small entity error counts. With a 7B model the quantization error is
a smaller share of what the model knows; the QLoRA paper found no gap on its benchmarks.

A QLoRA adapter is trained on the *dequantized NF4* weights: merge it into those, not into the
original ones and not back into 4 bits (05 measures why).

## Exercises

1. Evaluate the 8-bit adapter the same way: `run_evaluation(eightbit_config, compare_base=False)`.
   Where does it land between LoRA and QLoRA?
2. Train QLoRA with `train.per_device_batch_size=16`. Which grows more, peak memory or speed?
3. With `model.quantization: 4bit`, set `train.gradient_checkpointing: true`. How much peak memory
   does it save here, and what does it cost in seconds per step?
4. On a GPU machine, re-run this notebook and compare the ratios of footprint, peak memory and
   speed with the CPU numbers above.
'''

NOTEBOOKS["04_evaluation"] = r'''
# %% [md]
# 04 · Evaluation: did the adapter make the answers better?

**What you will learn**

- how `tunebook.evaluation.run_evaluation` compares the **base** model with **base + adapter** on
  the held-out test split, with the same prompts as training;
- the extraction metrics: entity **precision / recall / F1** (micro and per type), the rate of
  **valid JSON** and **exact match**;
- **error analysis**: which kinds of mistakes remain (invalid JSON, missing, invented, wrong type,
  wrong boundary), with examples;
- **perplexity**, and why a lower loss is not the same as better answers;
- the metrics for free-text answers (instruction data): **exact match, token F1, ROUGE-L**.

# %% parameters
SMOKE = False  # True: 4 test examples, 16 new tokens, and a 2-step adapter if 02 has not been run

# %%
{SETUP}

# %% [md]
## The adapter to evaluate

This notebook evaluates the adapter that 02 trained (`runs/smollm2-lora/adapter`). **If that folder
does not exist yet, the next cell first trains a short adapter** (60 steps; 2 in smoke mode) into
`runs/smollm2-lora-short`, so that the notebook runs on its own. Its scores are lower than those of
the full run: run 02 first for the real numbers.

# %%
from tunebook.notebook import ensure_adapter, notebook_config

config = notebook_config("configs/smollm2-135m-instruct/lora.yaml", SMOKE)
FALLBACK_STEPS = 2 if SMOKE else 60
adapter_dir = ensure_adapter(config, FALLBACK_STEPS)
EVAL_DIR = Path(config.train.output_dir) / "eval"

# %% [md]
## Base vs tuned on the test split

`run_evaluation` loads the model once, evaluates the base model, then attaches the adapter to the
same object and evaluates again: greedy generation for every test sentence (batched, left-padded),
parsing each answer as JSON, and scoring it against the reference. It also computes perplexity on
the validation split and writes `results.json` and `predictions.jsonl` to the run's `eval/` folder.
The full test split is 150 sentences (a few minutes on a CPU).

# %%
from tunebook.evaluation import run_evaluation

summary = run_evaluation(config, adapter_dir=str(adapter_dir))

# %% [md]
The same numbers as a table (`delta` = tuned − base):

# %%
import pandas as pd

KEYS = ["f1", "precision", "recall", "valid_json_rate", "exact_match", "perplexity"]
table = pd.DataFrame({name: {key: summary[name][key] for key in KEYS} for name in ("base", "tuned")})
table["delta"] = table["tuned"] - table["base"]
table.round(3)

# %% [md]
What each number means:

- **precision**: of the entities the model wrote, the share that are in the reference (right text
  *and* right type); **recall**: of the reference entities, the share the model found; **F1**:
  their harmonic mean. Micro-averaged: every entity of every sentence counts once.
- **valid_json_rate**: the share of answers that parse as a JSON object of lists of strings
  (packaging such as a ```` ```json ```` fence is tolerated). An invalid answer finds nothing.
- **exact_match**: the share of sentences whose entity set is exactly right — the strictest view.
- **perplexity** (lower is better): exp of the mean loss per answer token on the validation split,
  i.e. how surprised the model is by the reference answers. 1.0 would mean certainty.

## Per entity type

# %%
per_type = pd.DataFrame({name: {t: v["f1"] for t, v in summary[name]["per_type"].items()} for name in ("base", "tuned")})
per_type["support"] = pd.Series({t: v["support"] for t, v in summary["tuned"]["per_type"].items()})
per_type.round(3)

# %% [md]
`support` is the number of reference entities of that type. Compare the types with each other and
with the error analysis below: a type whose lists the model tends to leave empty scores low however
well it copies names. Organisations are the hardest in principle (long, they contain places — "Bank
of Lisbon" is one organization, not a location — and half of the test names never occur in training).

## Error analysis

Every wrong answer gets one or more categories (`tunebook.metrics.entity_f1.categorize_errors`):

| category | meaning |
|---|---|
| `invalid_json` | the answer does not parse (nothing else is comparable) |
| `missing_entity` | a reference entity is not in the answer |
| `invented_entity` | the answer has an entity that is not in the reference |
| `wrong_type` | the right text under the wrong type (a company listed as a location) |
| `boundary` | an overlapping but different span ("Lovelace" for "Ada Lovelace") |

# %%
pd.DataFrame({name: summary[name]["error_counts"] for name in ("base", "tuned")})

# %%
for category, examples in summary["tuned"]["error_examples"].items():
    example = examples[0]
    print(f"[{category}]\n  sentence:   {example['input']}\n  reference:  {example['reference']}\n  prediction: {example['prediction']}\n")

# %% [md]
The base model's mistakes are all of the first kind: it answers in its own format, so nothing can be
compared. The tuned model's JSON is valid in all but one answer, which fell into a repetition
loop and ran out of tokens; read its remaining mistakes above by category —
a missed entity lowers recall, an invented or wrongly typed one lowers precision. Every prediction,
base and tuned, is in `predictions.jsonl`:

# %%
predictions = pd.read_json(EVAL_DIR / "predictions.jsonl", lines=True)
predictions[["input", "reference", "tuned_output", "tuned_errors"]].head(5)

# %% [md]
## Loss vs task metric

Perplexity and F1 usually move together, but they measure different things. Perplexity averages
over every reference token (most are the fixed JSON keys and punctuation, which the tuned model
predicts with near certainty); F1 only cares whether the few entity tokens are right. A model can
lower its perplexity by getting the format perfect while still missing entities. That happened to
this job with learning rate 2e-4: perplexity 1.11 (close to 1), yet recall 0.12, because it left
most lists empty. Always look at the task metric.

## Metrics for free-text answers (the instruction data)

Answers to the Nimbus Support questions (`data/instructions`, trained in 05) are sentences, not
JSON, so the evaluation uses text overlap (`tunebook.metrics.text_overlap`):

- **exact match**: equal after lower-casing and dropping trailing punctuation — fair here because
  every fact has exactly one answer string, but harsh: a correct paraphrase scores 0;
- **token F1**: F1 over the bag of words (SQuAD style) — partial credit for shared words;
- **ROUGE-L**: F-measure of the longest common subsequence of words — rewards the same words *in
  the same order*.

`evaluate_generation` picks these automatically when the references are not JSON.

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

# %% [md]
Note how the *wrong* answer in the house style still earns partial token F1 and ROUGE-L: overlap
metrics reward the style as much as the fact. Report exact match with them, and read examples.

## Exercises

1. Train with the lower learning rate 2e-4 (`"train.learning_rate": 2e-4`) with
   `train.run_training` and evaluate again. Which metric collapses, and which error category
   explains it?
2. Evaluate the 8-bit adapter of 03 with the base comparison and error analysis of this notebook:
   `run_evaluation(notebook_config("configs/smollm2-135m-instruct/lora-8bit.yaml", SMOKE))`.
3. Lower `eval.max_new_tokens` to 40. Which metric drops, and which error category explains it?
4. Find a tuned `wrong_type` error in `predictions.jsonl`. Would a rule in the data README have
   helped the model (more training examples of that pattern)?
5. Evaluate on the validation split (`eval.split: validation`). Are the scores close to the test
   scores? Why must you still choose settings on validation, not test?
'''

NOTEBOOKS["05_inference_and_merging"] = r'''
# %% [md]
# 05 · Inference and merging: using adapters after training

**What you will learn**

- how to load a base model with a saved adapter and generate;
- how to **merge** an adapter into the base weights (a plain model without peft) and **verify**
  that the merged model computes the same thing (logit difference, identical greedy answers);
- what goes wrong when you merge a QLoRA adapter into a **4-bit base**;
- how to serve **two adapters on one base** (extraction and customer support), switching with
  `set_active_adapter`, and how much memory that saves over two merged copies;
- that a save / reload round trip gives the same outputs.

# %% parameters
SMOKE = False  # True: 2-step adapters, short generations, output under runs/smoke/

# %%
{SETUP}

# %% [md]
## The adapters

This notebook uses the extraction adapter of 02 and the QLoRA adapter of 03. **If either folder
does not exist yet, a short adapter is trained first** (60 steps for LoRA, 20 for QLoRA; 2 in smoke
mode), so the notebook runs on its own.

# %%
from tunebook.notebook import ensure_adapter, notebook_config, run_folder

config = notebook_config("configs/smollm2-135m-instruct/lora.yaml", SMOKE)
adapter_dir = ensure_adapter(config, 2 if SMOKE else 60)
NAME = config.model.name
WORK = Path(run_folder("inference", SMOKE))  # merged models and saved adapters go here

# %% [md]
## 1. Base + adapter: load and generate

# %%
from tunebook.evaluation import generate
from tunebook.formatting import build_prompt, prompt_messages
from tunebook.inference import load_for_inference

model, tokenizer = load_for_inference(NAME, adapter_dir)
sentences = ["Maria Okafor joined the Bank of Lisbon in Nairobi on 3 March 2021.",
             "Tourists visiting Dhaka can now take a night train to Montevideo."]
prompts = [build_prompt(tokenizer, prompt_messages({"input": s}, config.data)) for s in sentences]
for sentence, answer in zip(sentences, generate(model, tokenizer, prompts, max_new_tokens=config.eval.max_new_tokens)):
    print(f"{sentence}\n  -> {answer}")

# %% [md]
## 2. Merge the adapter into the base

Merging writes `W = W0 + (alpha/r)·B·A` into every adapted weight: the result is an ordinary
model — no peft needed to serve it, no extra matmuls per token — at the price of a full copy of the
weights per task. `merge_adapter` merges in fp32 and writes the model (safetensors + tokenizer) to
a separate folder; the base model is never modified.

# %%
from tunebook.inference import merge_adapter, merge_into_quantized_demo, verify_merge
from tunebook.models import load_model
from tunebook.notebook import folder_size_mb

merged_dir = merge_adapter(NAME, adapter_dir, WORK / "merged-extraction")
print(f"adapter: {folder_size_mb(adapter_dir):.1f} MB on disk; merged model: {folder_size_mb(merged_dir):.0f} MB in {merged_dir}")
merged = load_model(str(merged_dir))  # a plain transformers model
check = verify_merge(model, merged, tokenizer, prompts, max_new_tokens=config.eval.max_new_tokens)
print(f"max |logit difference|: {check['max_abs_logit_diff']:.2e}; same greedy answers: {check['greedy_identical']}")

# %% [md]
A difference of 1e-4 or less is float rounding (the merged weights are rounded once more, and the
sums run in a different order), and the greedy answers are identical: the merged model *is* the
tuned model.

## 3. Why not merge into a 4-bit base?

A QLoRA adapter was trained on top of the NF4-rounded weights. There are three ways to merge it,
and `merge_into_quantized_demo` measures each against the unmerged 4-bit model + adapter (the
model as it was trained):

- **dequantized merge** (what `merge_adapter` does for QLoRA adapters): dequantize NF4 to fp32,
  then add B·A. What is left is rounding: the reference computes in bf16, and bitsandbytes'
  CPU kernels dequantize NF4 blocks to bf16.
- **quantized merge**: add B·A and round the result back to NF4. The update is mostly smaller than
  the gap between two NF4 levels, so much of it is rounded away, and W0's rounding moves too.
- **full-precision base merge**: add B·A to the *original* fp32 weights. The adapter learned to
  correct the NF4 weights, not these, so this is a different model too.

# %%
import pandas as pd

qlora_config = notebook_config("configs/smollm2-135m-instruct/qlora-4bit.yaml", SMOKE)
qlora_adapter = ensure_adapter(qlora_config, 2 if SMOKE else 20)
demo = merge_into_quantized_demo(NAME, qlora_adapter, tokenizer, prompts)
pd.Series(demo, name="max |logit difference| to the trained 4-bit model").to_frame()

# %% [md]
The dequantized merge is the floor: the reference computes in bf16 (and bitsandbytes dequantizes
NF4 blocks through bf16 on a CPU), and over 30 layers that rounding adds up to about this much.
The quantized merge lands some 40 times further away, and the merge into the original
full-precision weights is far off — the adapter was trained to correct NF4 weights that no longer
exist there. The longer the adapter was trained, the larger its update and the larger the gap of the
quantized merge.

So: serve a QLoRA adapter unmerged on the 4-bit base, or merge it into the dequantized weights and
serve a 16/32-bit model. If you must serve a 4-bit model, quantize the merged model knowing it adds
the error of the quantized merge.

## 4. Two adapters on one base

One copy of the base weights can carry any number of adapters; a forward pass uses the active one.
To have a second task, we train a short adapter on the instruction-following data (Nimbus Support
answers; see 01). If it exists from an earlier run of this notebook, it is reused.

# %%
from tunebook.notebook import INSTRUCTIONS_OVERRIDES, close_figures
from tunebook.train import run_training

SUPPORT_STEPS = 100  # ~1 epoch of 862 examples at batch 8 (smoke mode: 2)
support_config = notebook_config("configs/smollm2-135m-instruct/lora.yaml", SMOKE, name="smollm2-support-lora",
                                 overrides={**INSTRUCTIONS_OVERRIDES, "train.max_steps": SUPPORT_STEPS})
support_adapter = Path(support_config.train.output_dir) / "adapter"
if not (support_adapter / "adapter_config.json").is_file():
    run_training(support_config)
    close_figures()

# %% [md]
`load_adapters` attaches both to one base; `set_active_adapter` switches. Each task keeps its own
prompt format (system prompt, instruction), built by the same `build_prompt` as in its training.

# %%
from tunebook.inference import load_adapters, set_active_adapter

two = load_adapters(NAME, {"extraction": adapter_dir, "support": support_adapter})
question = "How long do the batteries of the outdoor sensor last?"
task_prompts = {"extraction": prompts[0],
                "support": build_prompt(tokenizer, prompt_messages({"instruction": question}, support_config.data))}
for name, prompt in task_prompts.items():
    set_active_adapter(two, name)
    print(f"[{name} adapter] {generate(two, tokenizer, [prompt], max_new_tokens=config.eval.max_new_tokens)[0]}")
with two.disable_adapter():
    print(f"[no adapter] {generate(two, tokenizer, [task_prompts['support']], max_new_tokens=config.eval.max_new_tokens)[0]}")

# %% [md]
How good is the support adapter? The text-overlap metrics of 04 on a few test questions, with and
without the adapter:

# %%
from tunebook.data import load_and_validate
from tunebook.evaluation import evaluate_generation

support_test = load_and_validate(support_config.data)[0]["test"].select(range(4 if SMOKE else 20))
set_active_adapter(two, "support")
scores = {"support adapter": evaluate_generation(two, tokenizer, support_test, support_config.data, support_config.eval, task="text")}
with two.disable_adapter():
    scores["base"] = evaluate_generation(two, tokenizer, support_test, support_config.data, support_config.eval, task="text")
pd.DataFrame({name: {k: s[k] for k in ("exact_match", "token_f1", "rouge_l")} for name, s in scores.items()}).round(3)

# %% [md]
### Memory: one base + two adapters vs two merged models

# %%
from tunebook.inference import model_memory_bytes
from tunebook.notebook import mb

shared = model_memory_bytes(two)
adapters = sum(p.numel() * p.element_size() for n, p in two.named_parameters() if "lora_" in n)
one_merged = model_memory_bytes(merged)
print(f"one base + 2 adapters: {mb(shared):6.0f} MB  (the adapters: {mb(adapters):.1f} MB)")
print(f"two merged models:     {mb(2 * one_merged):6.0f} MB")
print(f"saved:                 {mb(2 * one_merged - shared):6.0f} MB; each further task costs {mb(adapters / 2):.1f} MB instead of {mb(one_merged):.0f} MB")

# %% [md]
The trade-off: unmerged adapters add a few small matmuls to every forward pass, and one batch uses
one adapter at a time here (peft can also mix adapters within a batch, and serving engines such as
vLLM batch many LoRA adapters together).

## 5. Save and reload: the same outputs

`save_pretrained` on a model with several adapters writes one sub-folder per adapter. Reloading
them on a fresh base must give exactly the same model.

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

# %% [md]
(`verify_merge` compares any two models; here the in-memory model and the reloaded one.)

## Exercises

1. Merge the *support* adapter too and load both merged models. Check the memory numbers of
   section 4 against the resident memory of this process (`psutil.Process().memory_info().rss`).
2. Call `merge_adapter(NAME, qlora_adapter, WORK / "merged-qlora")`: it reads the run's
   `config.yaml`, sees `quantization: 4bit` and merges into the dequantized weights. Verify it
   against `load_for_inference(NAME, qlora_adapter, quantization="4bit")[0]`. Why is the logit
   difference larger than in section 2 (hint: bf16 compute)?
3. Send the extraction prompt through the *support* adapter. What does it answer, and why?
4. Load the merged folder with plain `transformers.AutoModelForCausalLM.from_pretrained` (no
   tunebook, no peft) and generate: this is what you would ship.
'''

NOTEBOOKS["06_classification_lora"] = r'''
# %% [md]
# 06 · LoRA for classification: MiniLM sorts news into four topics

**What you will learn**

- how LoRA adapts an **encoder** (MiniLM-L6, 22M parameters) for **sequence classification**,
  where a new classification head is trained fully beside the adapters;
- why the knobs in `configs/minilm-l6/lora.yaml` differ from the generation configs;
- how to read **accuracy, macro-F1** and the **confusion matrix**;
- how to classify your own texts with the trained adapter.

Training takes about a minute on a 2-core CPU.

# %% parameters
SMOKE = False  # True: 2 steps of batch 2 on 32 examples, 4 test texts, output under runs/smoke/

# %%
{SETUP}

# %% [md]
## The config and its knobs

# %%
import yaml

from tunebook.config import config_to_dict
from tunebook.notebook import notebook_config

config = notebook_config("configs/minilm-l6/lora.yaml", SMOKE)
print(yaml.safe_dump({k: config_to_dict(config)[k] for k in ("model", "data", "lora", "train")}, sort_keys=False))

# %% [md]
| knob | value | why |
|---|---|---|
| `model.task` | sequence-classification | loads the encoder with a new, randomly initialised head: one output per label |
| `lora.r` / `alpha` | 8 / 16 | a 4-way topic decision needs less capacity than generating JSON; alpha = 2r as before |
| `lora.dropout` | 0.1 | 960 training texts: a bit more regularisation than for generation |
| `lora.target_modules` | auto | for BERT-style models: `query`, `key`, `value` and every `dense` layer (attention output, both MLP layers, and the pooler that feeds the head) |
| `train.learning_rate` | 1e-3 | the head starts random and must learn from scratch; the same rate as the extraction job |
| `train.max_steps` | 120 | 2 epochs of 960 examples at batch 16; the validation loss is lowest around here |

The head (`classifier`) is not a LoRA target: it is new, so it is trained fully (peft's
`modules_to_save`) and saved with the adapter.

# %%
from tunebook.memory import shape_from_name

shape = shape_from_name(config.model.name)
n_lora = shape.lora_parameters(config.lora.r)
n_head = shape.hidden_size * len(config.data.labels) + len(config.data.labels)
print(f"{shape.num_parameters:,} parameters in the encoder; LoRA r={config.lora.r}: {n_lora:,}; new head: {n_head:,}")

# %% [md]
## Train

# %%
from tunebook.notebook import close_figures, show_image
from tunebook.train import run_training

result = run_training(config)
close_figures()
show_image(result.run_dir / "loss_curve.png")

# %% [md]
## Evaluate: base vs tuned

The "base" here is the encoder with its *untrained* head, so it scores around chance (25 % for
four balanced classes); it shows the starting point, not a useful model.

# %%
from tunebook.evaluation import run_evaluation

summary = run_evaluation(config)
EVAL_DIR = Path(config.train.output_dir) / "eval"

# %% [md]
- **accuracy**: the share of texts with the right label. Fine here because the classes are
  balanced (30 test texts each).
- **macro-F1**: the mean of the per-class F1 scores, each class counted equally. On imbalanced data
  it exposes a model that ignores a small class, which accuracy hides.

# %%
import pandas as pd

labels = summary["tuned"]["labels"]
pd.DataFrame({name: dict(zip(labels, summary[name]["per_class_f1"])) for name in ("base", "tuned")}).round(3)

# %% [md]
## Confusion matrix

Rows are the true labels, columns the predictions; the diagonal is correct. Saved as
`confusion_matrix_tuned.png` (and `_base.png`) in the run's `eval/` folder.

# %%
show_image(EVAL_DIR / "confusion_matrix_tuned.png", width=420)

# %% [md]
A full diagonal is what this synthetic, template-based data allows after two epochs (its README
warns that scores here overstate real-world quality; a bag-of-words baseline reaches about 0.9).
When mistakes appear — with fewer steps, a smaller `r`, or real news — they are typically
Business ↔ Sci/Tech: tech-company earnings are Business, product launches are Sci/Tech, and both
mention the same companies.

## A few predictions

# %%
predictions = pd.read_json(EVAL_DIR / "predictions.jsonl", lines=True)
wrong = predictions[predictions["reference"] != predictions["tuned_output"]]
print(f"{len(wrong)} of {len(predictions)} test texts misclassified")
pd.concat([predictions.head(4), wrong.head(4)])[["input", "reference", "tuned_output"]]

# %% [md]
## Classify your own texts

`load_for_inference` loads the encoder with a head for our labels, then the adapter (which carries
the trained head).

# %%
import torch

from tunebook.inference import load_for_inference

model, tokenizer = load_for_inference(config.model.name, result.adapter_dir, task="sequence-classification", label_names=labels)
texts = ["Striker scores twice as the home side clinches the title.",
         "Chipmaker shares fall after quarterly revenue misses forecasts.",
         "Researchers unveil a battery that charges in five minutes.",
         "Leaders meet in Geneva to discuss a ceasefire."]
with torch.inference_mode():
    probabilities = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits.softmax(-1)
for text, p in zip(texts, probabilities):
    print(f"{labels[int(p.argmax())]:<9} {float(p.max()):.2f}  {text}")

# %% [md]
## Exercises

1. Train with `lora.r=2` and with `lora.r=32` (`config = apply_overrides(config, {...})`). Does
   the rank matter for this task?
2. Set `lora.target_modules` to `["query", "value"]`. How do accuracy and trainable parameters
   change?
3. Lower `train.learning_rate` to 2e-4 (a common LoRA value). What happens to the loss curve
   in 120 steps, and why (hint: the head)?
4. Write three headlines that you think are ambiguous between Business and Sci/Tech and look at
   the probabilities.
'''


def parse_cells(text: str) -> list:
    """Split a notebook text on ``# %%`` markers into markdown, parameters and code cells."""
    cells = []
    for chunk in text.replace("{SETUP}", SETUP).split("\n# %%")[1:]:
        header, _, body = chunk.partition("\n")
        body = body.strip("\n")
        kind = header.strip()
        if kind == "[md]":
            cells.append(new_markdown_cell(body))
        elif kind == "parameters":
            cells.append(new_code_cell(body, metadata={"tags": ["parameters"]}))
        else:
            cells.append(new_code_cell(body))
    return cells


def code_sources(nb) -> list[str]:
    return [c.source for c in nb.cells if c.cell_type == "code"]


def build(name: str) -> tuple[Path, bool]:
    """Write notebooks/<name>.ipynb. When only markdown changed, the executed outputs are kept."""
    nb = new_notebook(cells=parse_cells("\n" + NOTEBOOKS[name].strip("\n")))
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    path = ROOT / "notebooks" / f"{name}.ipynb"
    path.parent.mkdir(exist_ok=True)
    kept = False
    if path.is_file():
        old = nbformat.read(path, as_version=4)
        if code_sources(old) == code_sources(nb):
            executed = iter(c for c in old.cells if c.cell_type == "code")
            for cell in nb.cells:
                if cell.cell_type == "code":
                    previous = next(executed)
                    cell.outputs, cell.execution_count = previous.outputs, previous.execution_count
                    cell.metadata = previous.metadata
            nb.metadata = old.metadata
            kept = any(c.get("outputs") for c in nb.cells if c.cell_type == "code")
    nbformat.write(nb, path)
    return path, kept


def main(argv: list[str]) -> int:
    wanted = [n for n in NOTEBOOKS if not argv or any(n.startswith(a) or n == Path(a).stem for a in argv)]
    for name in wanted:
        path, kept = build(name)
        print(f"wrote {path.relative_to(ROOT)}" + (" (code unchanged: outputs kept)" if kept else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

"""Train a LoRA adapter with the transformers `Trainer` and write a self-describing run folder.

Why `Trainer` and not a hand-written loop: it already does gradient accumulation, mixed precision,
checkpoint/resume (optimizer, scheduler and RNG state included) and multi-GPU through
`accelerate` (DDP, FSDP, DeepSpeed), so ``accelerate launch -m tunebook train CONFIG`` scales the
same code from this CPU to many GPUs. tunebook adds what tutorials leave out: data checks before
the model loads, completion-only labels, a loss check every step, measured tokens/s and peak memory.

A run folder (``train.output_dir``) holds::

    adapter/            adapter weights only (safetensors) + adapter_config.json
    checkpoints/        Trainer checkpoints for --resume
    config.yaml         the resolved config
    environment.json    versions and hardware decisions
    metrics.json        losses per logging step, runtime, tokens/s, peak memory
    loss_curve.png      train and eval loss
    length_histogram.png
"""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import DataCollatorWithPadding, Trainer, TrainingArguments, set_seed

from .config import RunConfig, save_config
from .environment import Decision, choose_device, choose_precision, environment_report, precision_dtype
from .files import atomic_directory, write_json
from .formatting import CompletionCollator
from .lora import apply_lora, count_parameters
from .models import load_model, load_tokenizer
from .plots import plot_loss_curve
from .prepare import prepare_tokenized


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


@dataclass
class TrainResult:
    run_dir: Path
    adapter_dir: Path
    metrics: dict


def say(message: str) -> None:
    """Print from the main process only (under `accelerate launch` every rank runs this code)."""
    if int(os.environ.get("RANK", 0)) == 0:
        print(f"[tunebook] {message}", flush=True)


class TunebookTrainer(Trainer):
    """`Trainer` that checks the loss every step and counts the tokens it actually trains on."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.trained_tokens = 0  # labels != -100 (what the loss sees)
        self.input_tokens = 0  # non-padding tokens the forward pass processes
        self.padded_tokens = 0  # every position the forward pass computes, padding included
        # Per micro-batch in this process: rows, padded width, trained tokens, time.perf_counter() at its end.
        self.batch_log: list[dict] = []
        self.micro_batches = 0  # in this process, this run (a resumed run counts from the resume)

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        self.micro_batches += 1
        if not torch.isfinite(loss):
            raise TrainingDiverged(
                f"Loss became {loss.item()} at step {self.state.global_step + 1}. Lower "
                "train.learning_rate, try train.precision: fp32, or check the data for empty answers. "
                "Checkpoints before this step are kept; --resume continues from the last one."
            )
        labels = inputs.get("labels")
        trained = 0
        if labels is not None and labels.dim() > 1:  # causal LM; classification labels are one per row
            trained = int((labels != -100).sum())
            self.trained_tokens += trained
        mask = inputs.get("attention_mask")
        self.input_tokens += int(mask.sum()) if mask is not None else inputs["input_ids"].numel()
        self.padded_tokens += inputs["input_ids"].numel()
        rows, width = inputs["input_ids"].shape[:2]
        self.batch_log.append({"rows": rows, "width": width, "trained_tokens": trained,
                               "end": time.perf_counter()})
        return loss


def choose_optimizer(config: RunConfig, device: str) -> Decision:
    if config.train.optim != "auto":
        return Decision(config.train.optim, "asked for in the config (train.optim)")
    if config.model.quantization == "4bit" and device == "cuda":
        return Decision("paged_adamw_8bit", "QLoRA on CUDA: paged 8-bit AdamW absorbs memory spikes")
    return Decision("adamw_torch", "AdamW; adapter optimizer state is small, nothing to page")


# "7B-class": Llama-2-7B has 6.7B parameters, Mistral-7B 7.2B, Llama-3-8B 8.0B; 3B models and
# smaller train at ordinary lengths without it.
CHECKPOINTING_MIN_PARAMETERS = 5e9


def choose_gradient_checkpointing(setting: bool | str, num_parameters: int) -> Decision:
    """Gradient checkpointing on or off; "auto" turns it on for 7B-class models and larger."""
    if setting != "auto":
        return Decision(f"gradient checkpointing {'on' if setting else 'off'}",
                        "asked for in the config (train.gradient_checkpointing)")
    size = f"{num_parameters / 1e9:.2g}B parameters"
    if num_parameters >= CHECKPOINTING_MIN_PARAMETERS:
        return Decision("gradient checkpointing on",
                        f"{size} (7B-class): activations saved for backward rival the weights "
                        "(Llama-3-8B, 2,048 tokens: 12.3 GiB without, 0.9 GiB with); ~30% more compute")
    return Decision("gradient checkpointing off",
                    f"{size}, under {CHECKPOINTING_MIN_PARAMETERS / 1e9:.0f}B: it would add ~30% compute "
                    "(set train.gradient_checkpointing: true for very long sequences)")


def frozen_weight_dtype(precision: str) -> torch.dtype:
    """dtype to store the frozen base weights in: the compute dtype.

    Only the adapters are updated, so the base needs no fp32 master copy. Storing it in bf16
    halves its memory and, on CPU, saves autocast from re-casting every frozen fp32 weight to
    bf16 in every forward and backward (autocast caches casts only for weights that require grad).
    The adapters stay fp32 (peft upcasts them), so updates are not lost to bf16 rounding.
    """
    return precision_dtype(precision)


def peak_memory_mb(device: str) -> float:
    """Peak memory of this process: GPU allocations on CUDA, resident set size on CPU."""
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def training_arguments(config: RunConfig, run_dir: Path, precision: str, optim: str,
                       has_eval: bool) -> TrainingArguments:
    t = config.train
    return TrainingArguments(
        output_dir=str(run_dir / "checkpoints"),
        max_steps=t.max_steps,
        per_device_train_batch_size=t.per_device_batch_size,
        per_device_eval_batch_size=t.per_device_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        warmup_steps=t.warmup_ratio,  # a float in [0, 1) is a fraction of the steps
        weight_decay=t.weight_decay,
        lr_scheduler_type=t.lr_scheduler,
        max_grad_norm=t.max_grad_norm,
        optim=optim,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=not torch.cuda.is_available(),
        # Length grouping: batches of similar length, so dynamic padding adds few pad tokens.
        train_sampling_strategy="group_by_length" if t.group_by_length else "random",
        logging_steps=t.logging_steps,
        logging_first_step=True,
        logging_nan_inf_filter=False,  # show a NaN rather than hide it; TunebookTrainer stops on it
        eval_strategy="steps" if has_eval else "no",
        # Evaluation during training reports the loss only. Without this the Trainer also gathers
        # every eval batch's logits (50 rows x ~100 tokens x 49k vocab in fp32 = ~1 GB here) for a
        # compute_metrics that tunebook does not use; task metrics come from tunebook.evaluation.
        prediction_loss_only=True,
        eval_steps=t.eval_steps,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        seed=t.seed,
        data_seed=t.seed,
        report_to="none",
        remove_unused_columns=False,
        # DDP: every LoRA parameter gets a gradient every step, so the unused-parameter search
        # (an extra pass over the graph) is wasted work.
        ddp_find_unused_parameters=False,
    )


def last_complete_checkpoint(checkpoints: Path) -> Path:
    """The newest ``checkpoint-N`` in `checkpoints` that was saved completely.

    The Trainer writes a checkpoint's files one after another and ``trainer_state.json`` last, so
    a run killed while saving leaves a newest folder without a readable state file; resuming from
    it would fail or load half a state. Such folders are removed (and said so): nothing is lost
    but the steps since the previous checkpoint.
    """
    def step(path: Path) -> int:
        return int(path.name.split("-")[-1])

    candidates = sorted((p for p in checkpoints.glob("checkpoint-*")
                         if p.is_dir() and p.name.split("-")[-1].isdigit()), key=step, reverse=True)
    for candidate in candidates:
        try:
            json.loads((candidate / "trainer_state.json").read_text())
        except (OSError, ValueError):
            # Useless to resume from, and in the way: the Trainer would later write the same step
            # into the folder, on top of the stale half-written files.
            say(f"--resume: removing {candidate.name}: its trainer_state.json is missing or cut short "
                "(the run stopped while saving it)")
            shutil.rmtree(candidate)
            continue
        say(f"--resume: continuing from {candidate.name}")
        return candidate
    raise FileNotFoundError(f"--resume: no complete checkpoint in {checkpoints}; "
                            "run without --resume to start from scratch.")


def run_training(config: RunConfig, resume: bool = False) -> TrainResult:
    """Prepare data, load the model, train LoRA, save adapter + metrics + plots. Returns the paths."""
    run_dir = Path(config.train.output_dir)
    resume_from = last_complete_checkpoint(run_dir / "checkpoints") if resume else None
    run_dir.mkdir(parents=True, exist_ok=True)
    device = choose_device()
    precision = choose_precision(config.train.precision, device.value)
    optim = choose_optimizer(config, device.value)
    for decision in (device, precision, optim):
        say(str(decision))

    # Data first: a bad file fails here in seconds, before minutes of model loading.
    tokenizer = load_tokenizer(config.model.name, config.model.trust_remote_code)
    # Under `accelerate launch` every rank prepares the data; only the main one draws the histogram
    # (two processes writing one PNG can leave it corrupt).
    main_process = int(os.environ.get("RANK", 0)) == 0
    prepared = prepare_tokenized(config, tokenizer, run_dir / "length_histogram.png" if main_process else None)
    tokenized, stats, labels = prepared.tokenized, prepared.stats, prepared.labels
    classification = config.data.recipe == "classification"
    say(f"data: {prepared.report['split_sizes']}; train tokens per example: p50={stats['p50']:.0f} "
        f"p95={stats['p95']:.0f} max={stats['max']}")
    longest = max(max(split["length"], default=0) for split in tokenized.values())
    if config.train.pad_to_length is not None and config.train.pad_to_length < longest:
        raise ValueError(f"train.pad_to_length={config.train.pad_to_length} is shorter than the longest "
                         f"example ({longest} tokens); raise it, or set it to null for dynamic padding.")

    eval_data = tokenized["validation"]
    if config.train.max_eval_examples is not None:
        eval_data = eval_data.select(range(min(config.train.max_eval_examples, len(eval_data))))
    # TrainingArguments before the model, as transformers' FSDP/DeepSpeed recipes do: creating them
    # starts the process group, pins this rank's GPU and registers a ZeRO-3 config, so that loading
    # places 4-bit weights on this rank's GPU and lets FSDP (cpu_ram_efficient_loading) and ZeRO-3
    # (zero.Init) avoid a full copy of the model per rank.
    args = training_arguments(config, run_dir, precision.value, optim.value, len(eval_data) > 0)

    # The seed is set *before* the adapter is created: LoRA's A matrices are random, so the same
    # seed gives the same initial adapter and the same loss curve.
    set_seed(config.train.seed)
    model = load_model(config.model.name, config.model.task, quantization=config.model.quantization,
                       dtype=frozen_weight_dtype(precision.value), label_names=labels,
                       trust_remote_code=config.model.trust_remote_code)
    checkpointing = choose_gradient_checkpointing(config.train.gradient_checkpointing,
                                                  count_parameters(model)[1])
    say(str(checkpointing))
    model = apply_lora(model, config.lora, config.model.task, checkpointing.value.endswith(" on"),
                       verbose=main_process)
    collator = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8) if classification \
        else CompletionCollator(tokenizer, pad_to_length=config.train.pad_to_length)
    trainer = TunebookTrainer(
        model=model,
        args=args,
        train_dataset=tokenized["train"],
        eval_dataset=eval_data if len(eval_data) else None,
        data_collator=collator,
        processing_class=tokenizer,
    )
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    runtime = time.perf_counter() - start

    adapter_dir = run_dir / "adapter"
    metrics = collect_metrics(trainer, runtime, device.value, stats, start)
    metrics["decisions"] = {"device": str(device), "precision": str(precision), "optimizer": str(optim),
                            "gradient_checkpointing": str(checkpointing)}
    sharded = trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled
    if sharded:  # every rank holds a shard of the adapter: all of them take part in gathering it
        save_sharded_adapter(trainer, adapter_dir)
    if trainer.is_world_process_zero():
        if not sharded:
            save_adapter(trainer.model, adapter_dir)
        tokenizer.save_pretrained(adapter_dir)
        save_config(config, run_dir / "config.yaml")
        write_json(run_dir / "environment.json", environment_report())
        write_json(run_dir / "metrics.json", metrics)
        plot_loss_curve(trainer.state.log_history, run_dir / "loss_curve.png",
                        title=f"{config.model.name} + LoRA r={config.lora.r}")
        speed = (f"{metrics['trained_tokens_per_second']:.0f} trained tokens/s" if metrics["trained_tokens"]
                 else f"{metrics['input_tokens_per_second']:.0f} input tokens/s")
        say(f"adapter saved to {adapter_dir}; {speed}, "
            f"peak memory {metrics['peak_memory_mb']:.0f} MB, final train loss {metrics['final_train_loss']:.4f}")
    return TrainResult(run_dir, adapter_dir, metrics)


def collect_metrics(trainer: TunebookTrainer, runtime: float, device: str, stats: dict,
                    start: float = 0.0) -> dict:
    """Numbers that describe the run (summed over processes under `accelerate launch`)."""
    counts = torch.tensor([trainer.trained_tokens, trainer.input_tokens, trainer.padded_tokens],
                          dtype=torch.float64)
    counts = trainer.accelerator.reduce(counts.to(trainer.accelerator.device), reduction="sum").cpu()
    history = trainer.state.log_history
    train_losses = [{"step": e["step"], "loss": e["loss"]} for e in history if "loss" in e]
    eval_losses = [{"step": e["step"], "eval_loss": e["eval_loss"]} for e in history if "eval_loss" in e]
    steps_this_run = max(trainer.micro_batches // trainer.args.gradient_accumulation_steps, 1)
    return {
        "global_step": trainer.state.global_step,
        "train_loss": train_losses,
        "eval_loss": eval_losses,
        "final_train_loss": train_losses[-1]["loss"] if train_losses else math.nan,
        "final_eval_loss": eval_losses[-1]["eval_loss"] if eval_losses else None,
        "runtime_seconds": runtime,
        # Part of runtime_seconds spent in evaluation (Trainer's eval_runtime, summed).
        "eval_seconds": sum(e.get("eval_runtime", 0.0) for e in history),
        "seconds_per_step": runtime / steps_this_run,
        "trained_tokens": int(counts[0]),
        "input_tokens": int(counts[1]),
        "trained_tokens_per_second": float(counts[0]) / runtime,
        "input_tokens_per_second": float(counts[1]) / runtime,
        "padded_tokens": int(counts[2]),  # incl. padding: what the device computes
        # This process's micro-batches; end_seconds counts from the start of training, so the
        # first step's warm-up and the steady state can be told apart.
        "batch_log": [{**{k: v for k, v in b.items() if k != "end"}, "end_seconds": b["end"] - start}
                      for b in trainer.batch_log],
        "peak_memory_mb": peak_memory_mb(device),
        "world_size": trainer.args.world_size,
        "length_stats": stats,
    }


def save_adapter(model: torch.nn.Module, adapter_dir: Path) -> None:
    """Save adapter weights atomically (see `tunebook.files`): a crash keeps the previous adapter."""
    with atomic_directory(adapter_dir) as staging:
        model.save_pretrained(staging, safe_serialization=True)


def save_sharded_adapter(trainer: Trainer, adapter_dir: Path) -> None:
    """Save the adapter under FSDP or DeepSpeed ZeRO. Every rank must call this.

    The adapter weights are sharded over the ranks, so a main-process-only ``save_pretrained``
    would hang (FSDP gathers collectively) or write empty tensors (ZeRO-3). ``Trainer.save_model``
    gathers them on every rank and writes on the main process only. FSDP's SHARDED_STATE_DICT
    (fast checkpoints) makes ``save_model`` skip the weights, so the final save asks for a full one.
    ZeRO-3 needs ``zero3_save_16bit_model: true`` (configs/accelerate/deepspeed_zero3.yaml).
    """
    if trainer.is_fsdp_enabled:
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    staging = adapter_dir.with_name(f".{adapter_dir.name}.gather")  # same path on every rank
    trainer.save_model(str(staging))
    if trainer.is_world_process_zero():
        (staging / "training_args.bin").unlink(missing_ok=True)  # a pickle; config.yaml holds the settings
        with atomic_directory(adapter_dir) as final:
            for item in staging.iterdir():
                os.replace(item, final / item.name)
        shutil.rmtree(staging, ignore_errors=True)

"""Train a LoRA adapter with the transformers `Trainer` and write a self-describing run folder.

Why `Trainer` and not a hand-written loop: it already does gradient accumulation, mixed precision,
checkpoint/resume (optimizer, scheduler and RNG state included) and multi-GPU through
`accelerate` (DDP, FSDP, DeepSpeed), so ``accelerate launch -m tunebook train CONFIG`` scales the
same code from this CPU to many GPUs. tunebook adds what tutorials leave out: data checks before
the model loads, completion-only labels, a loss check every step and a divergence guard, measured
tokens/s and peak memory, and a run folder that is never silently replaced (:mod:`tunebook.runs`
lists what it holds).
"""

from __future__ import annotations

import math
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    DataCollatorWithPadding,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PrinterCallback,
    ProgressCallback,
    Trainer,
    TrainingArguments,
    set_seed,
)

from .activations import use_lean_activations, use_lean_dropout
from .config import RunConfig
from .decisions import (
    Decisions,
    choose_gradient_checkpointing,
    choose_trained_positions_loss,
    frozen_weight_dtype,
    hardware_decisions,
    longest_batch_fit,
)
from .environment import environment_report
from .errors import ConfigError, RunFolderError
from .files import write_failure, write_json
from .formatting import completion_collator
from .log import get_logger, is_main_process
from .lora import apply_lora, count_parameters, keep_adapter_input_dtype
from .models import load_model, load_tokenizer
from .plots import plot_length_histogram, plot_loss_curve
from .prepare import Prepared, prepare_tokenized
from .runs import check_run, discard_unstarted_run, save_adapter, save_sharded_adapter, start_run
from .trainer import (  # TrainingDiverged: what run_training raises, importable from here
    DivergenceGuard,
    MemoryLog,
    ReadableLogLines,
    ReadableLogPrinter,
    TrainingDiverged,  # noqa: F401
    TunebookTrainer,
    WeightedClassificationLoss,
    balanced_class_weights,
)

logger = get_logger()


@dataclass
class TrainResult:
    run_dir: Path
    adapter_dir: Path
    metrics: dict


PROC_STATUS = Path("/proc/self/status")  # Linux: VmHWM, the resident-set high-water mark


def reset_peak_memory(device: str) -> None:
    """Count the peak from now on, so that each run reports its own (see `peak_memory_mb`).

    A notebook kernel trains several runs in one process, and a process's lifetime peak only
    grows: without a reset each run would report the largest peak of any run before it. On Linux,
    writing 5 to /proc/self/clear_refs sets the high-water mark back to the current RSS.
    """
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:  # not Linux: the figure stays the process's lifetime peak
        pass


def peak_memory_mb(device: str) -> float:
    """Peak memory since `reset_peak_memory`: GPU allocations on CUDA, resident set size on CPU.

    On CPU it is VmHWM where /proc exists (a new process starts from zero; ru_maxrss would start
    from its parent's peak, which in a notebook is the kernel's), else ru_maxrss.
    """
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    if PROC_STATUS.exists():
        for line in PROC_STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / 2**20 if sys.platform == "darwin" else maxrss / 1024  # macOS reports bytes, Linux KiB


def training_arguments(config: RunConfig, run_dir: Path, precision: str, optim: str,
                       has_eval: bool) -> TrainingArguments:
    """The Trainer's settings from tunebook's config (every train.* key lands here)."""
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
        # Only the model's inputs reach it: tokenized datasets also carry `length`, `row` and
        # `truncated`. (The length-grouped sampler then measures input_ids itself: same lengths.)
        remove_unused_columns=True,
        # DDP: every LoRA parameter gets a gradient every step, so the unused-parameter search
        # (an extra pass over the graph) is wasted work.
        ddp_find_unused_parameters=False,
    )


def prepare_training_data(config: RunConfig, tokenizer: PreTrainedTokenizerBase) -> Prepared:
    """Validated, tokenized splits (a bad file fails here in seconds, before minutes of model loading)."""
    prepared = prepare_tokenized(config, tokenizer)
    stats = prepared.stats
    logger.info(f"data: {prepared.report['split_sizes']}; train tokens per example: p50={stats['p50']:.0f} "
                f"p95={stats['p95']:.0f} max={stats['max']}")
    longest = max(max(split["length"], default=0) for split in prepared.tokenized.values())
    if config.train.pad_to_length is not None and config.train.pad_to_length < longest:
        raise ConfigError(f"train.pad_to_length={config.train.pad_to_length} is shorter than the longest "
                            f"example ({longest} tokens); raise it, or set it to null for dynamic padding.")
    cap = config.train.eval_loss_examples
    validation = prepared.tokenized["validation"]
    if cap is not None:
        prepared.tokenized["validation"] = validation.select(range(min(cap, len(validation))))
    return prepared


def build_model(config: RunConfig, decisions: Decisions, labels: list[str] | None,
                longest_example: int | None = None) -> PreTrainedModel:
    """The base model (quantized if asked) with LoRA adapters attached, ready to train.

    `longest_example` (tokens) lets train.gradient_checkpointing: auto weigh the longest batch's
    estimated memory against what is free; without it only the model's size decides.
    """
    # The seed is set *before* the adapter is created: LoRA's A matrices are random, so the same
    # seed gives the same initial adapter and the same loss curve.
    set_seed(config.train.seed)
    model = load_model(config.model.name, config.model.task, quantization=config.model.quantization,
                       dtype=frozen_weight_dtype(decisions.precision.value), label_names=labels,
                       trust_remote_code=config.model.trust_remote_code)
    use_lean_activations(model, verbose=is_main_process())  # same forward and gradients, less kept for backward
    fit = (longest_batch_fit(config, decisions, model, longest_example)
           if longest_example and config.train.gradient_checkpointing == "auto" else None)
    checkpointing = choose_gradient_checkpointing(config.train.gradient_checkpointing, count_parameters(model)[1], fit)
    logger.info(str(checkpointing))
    model = apply_lora(model, config.lora, config.model.task, checkpointing.value, verbose=is_main_process())
    if decisions.device.value == "cpu":  # after apply_lora: LoRA's dropout modules come with it
        use_lean_dropout(model, verbose=is_main_process())
    if decisions.precision.value != "fp32":  # the Trainer runs the step under autocast
        keep_adapter_input_dtype(model)
    return model


def run_training(config: RunConfig, resume: bool = False, overwrite: bool = False) -> TrainResult:
    """Prepare data, load the model, train LoRA, save adapter + metrics + plots. Returns the paths.

    Stops before any work when ``train.output_dir`` holds another run (see :mod:`tunebook.runs`);
    `resume` continues it from its last checkpoint, `overwrite` replaces it.
    """
    run_dir = Path(config.train.output_dir)
    if is_main_process():
        check_run(config, resume, overwrite)  # writes nothing: the folder is claimed once data and model are fine
    decisions = hardware_decisions(config)
    tokenizer = load_tokenizer(config.model.name, config.model.trust_remote_code)
    prepared = prepare_training_data(config, tokenizer)
    validation = prepared.tokenized["validation"]
    # TrainingArguments before the model, as transformers' FSDP/DeepSpeed recipes do: creating them
    # starts the process group, pins this rank's GPU and registers a ZeRO-3 config, so that loading
    # places 4-bit weights on this rank's GPU and lets FSDP (cpu_ram_efficient_loading) and ZeRO-3
    # (zero.Init) avoid a full copy of the model per rank.
    args = training_arguments(config, run_dir, decisions.precision.value, decisions.optimizer.value,
                              has_eval=len(validation) > 0)
    reset_peak_memory(decisions.device.value)  # after the arguments pinned this rank's GPU; loading counts
    model = build_model(config, decisions, prepared.labels, max(prepared.tokenized["train"]["length"], default=0))
    resume_from = start_run(config, resume, overwrite, is_main_process())
    try:
        return _train(config, run_dir, decisions, tokenizer, prepared, args, model, resume_from)
    except Exception as exc:
        kept = discard_unstarted_run(run_dir) if is_main_process() and resume_from is None else None
        if (reason := write_failure(exc)) is None:
            raise
        resume_hint = (f"`train --resume` continues from {kept.name}" if kept else
                       "nothing was saved, so train again" if resume_from is None else
                       "`train --resume` continues from the last complete checkpoint")
        raise RunFolderError(f"Writing the run into {run_dir} failed: {reason}. Free disk space, or set "
                             f"train.output_dir to a folder with room that you can write; {resume_hint}.") from exc


def _train(config: RunConfig, run_dir: Path, decisions: Decisions, tokenizer: PreTrainedTokenizerBase,
           prepared: Prepared, args: TrainingArguments, model: PreTrainedModel, resume_from: Path | None
           ) -> TrainResult:
    validation = prepared.tokenized["validation"]
    if is_main_process():  # one process draws it: two writing one PNG can leave it corrupt
        plot_length_histogram(prepared.tokenized["train"]["length"], prepared.stats["max_length"],
                              run_dir / "length_histogram.png")
    loss_func = None
    if config.data.recipe == "classification":
        collator = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8)
        if config.train.class_weights == "balanced":
            weights = balanced_class_weights(prepared.tokenized["train"]["label"], len(prepared.labels or []))
            logger.info("class weights (balanced): " + ", ".join(
                f"{name} {w:.2f}" for name, w in zip(prepared.labels or range(len(weights)), weights.tolist())))
            loss_func = WeightedClassificationLoss(weights)
    else:
        head_only_where_trained = choose_trained_positions_loss(model, args)
        logger.info(str(head_only_where_trained))
        collator = completion_collator(tokenizer, config.train.pad_to_length, head_only_where_trained.value)
    memory = MemoryLog(decisions.device.value)
    trainer = TunebookTrainer(model=model, args=args, train_dataset=prepared.tokenized["train"],
                              eval_dataset=validation if len(validation) else None, data_collator=collator,
                              processing_class=tokenizer, compute_loss_func=loss_func,
                              callbacks=[DivergenceGuard(config.train.learning_rate), memory])
    # One short line per log instead of a dict: under the progress bar, or printed when bars are
    # off (args.disable_tqdm, e.g. when transformers' verbosity is error, as in the notebooks).
    bars_off = args.disable_tqdm
    stock, readable = (PrinterCallback, ReadableLogPrinter) if bars_off else (ProgressCallback, ReadableLogLines)
    trainer.remove_callback(stock)
    trainer.add_callback(readable)
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    metrics = collect_metrics(trainer, time.perf_counter() - start, decisions.device.value, prepared.stats, start)
    metrics["decisions"] = {"device": str(decisions.device), "precision": str(decisions.precision),
                            "optimizer": str(decisions.optimizer),  # checkpointing: the outcome (its reason is logged)
                            "gradient_checkpointing": "on" if model.get_base_model().is_gradient_checkpointing
                            else "off"}
    metrics["memory_log"] = memory.log
    adapter_dir = save_run(trainer, tokenizer, config, metrics)
    return TrainResult(run_dir, adapter_dir, metrics)


def save_run(trainer: Trainer, tokenizer: PreTrainedTokenizerBase, config: RunConfig, metrics: dict) -> Path:
    """Adapter (gathered from every rank when sharded), metrics, environment and loss curve."""
    run_dir = Path(config.train.output_dir)
    adapter_dir = run_dir / "adapter"
    sharded = trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled
    if sharded:  # every rank holds a shard of the adapter: all of them take part in gathering it
        save_sharded_adapter(trainer, adapter_dir)
    if trainer.is_world_process_zero():
        if not sharded:
            save_adapter(trainer.model, adapter_dir)
        tokenizer.save_pretrained(adapter_dir)
        write_json(run_dir / "environment.json", environment_report())
        write_json(run_dir / "metrics.json", metrics)
        plot_loss_curve(trainer.state.log_history, run_dir / "loss_curve.png",
                        title=f"{config.model.name} + LoRA r={config.lora.r}")
        speed = (f"{metrics['trained_tokens_per_second']:.0f} trained tokens/s" if metrics["trained_tokens"]
                 else f"{metrics['input_tokens_per_second']:.0f} input tokens/s")
        logger.info(f"adapter saved to {adapter_dir}; {speed}, peak memory {metrics['peak_memory_mb']:.0f} MB, "
                    f"final train loss {metrics['final_train_loss']:.4f}")
    return adapter_dir


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

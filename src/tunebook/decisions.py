"""What a run decides before it trains, each choice with the reason the log gives for it.

Device and precision come from :mod:`tunebook.environment`; this module adds the choices that
depend on the run's config and model: the optimizer, gradient checkpointing (by model size, and by
the longest batch's estimate against the free memory: `longest_batch_fit`, :mod:`tunebook.memory`),
the loss over trained positions only, and the dtype the frozen weights are stored in.
`hardware_decisions` makes and logs the device, precision and optimizer choices (`Decisions`) and
the host allocator setting; the choose_* functions return a `Decision` (value, reason), which
:mod:`tunebook.train` logs as it builds the model, e.g. "gradient checkpointing off: 0.13B
parameters; the longest batch (8 x 384 tokens) is estimated to need 4.5 GiB ...".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, TrainingArguments

from .config import RunConfig
from .environment import (
    Decision,
    available_memory,
    choose_device,
    choose_precision,
    precision_dtype,
    return_freed_tensors_to_os,
    sharded_training,
)
from .formatting import accepts_logits_to_keep
from .log import get_logger
from .memory import StepFit, longest_step_fit, shape_from_config

logger = get_logger()


@dataclass(frozen=True)
class Decisions:
    """The hardware and optimizer choices of a run, each with the reason it was logged with."""

    device: Decision[str]
    precision: Decision[str]
    optimizer: Decision[str]


def choose_optimizer(config: RunConfig, device: str) -> Decision[str]:
    """The config's optimizer, else AdamW: paged 8-bit for QLoRA on CUDA, plain AdamW otherwise."""
    if config.train.optim != "auto":
        return Decision(config.train.optim, "asked for in the config (train.optim)")
    if config.model.quantization == "4bit" and device == "cuda":
        return Decision("paged_adamw_8bit", "QLoRA on CUDA: paged 8-bit AdamW absorbs memory spikes")
    return Decision("adamw_torch", "AdamW; adapter optimizer state is small, nothing to page")


# "7B-class": Llama-2-7B has 6.7B parameters, Mistral-7B 7.2B, Llama-3-8B 8.0B; 3B models and
# smaller train at ordinary lengths without it.
CHECKPOINTING_MIN_PARAMETERS = 5e9


# The estimate counts tensors; on a CPU the resident set grew by 0.99-1.12x it on long batches
# (benchmarks/README.md; allocator slack and backward's transients), so a step estimated above
# three quarters of the free memory is too close to run without checkpointing. Not yet checked
# against a GPU's peaks.
CHECKPOINTING_MEMORY_SHARE = 0.75
_COST = "backward recomputes each layer's forward (~30% more compute on GPUs; 2-13% measured on a CPU)"


def choose_gradient_checkpointing(setting: bool | str, num_parameters: int,
                                  fit: StepFit | None = None) -> Decision[bool]:
    """Gradient checkpointing on or off. "auto" turns it on for 7B-class models, and for any model
    whose longest batch is estimated (`fit`) to need more than CHECKPOINTING_MEMORY_SHARE of the free memory."""
    if setting != "auto":
        return Decision(bool(setting), "asked for in the config (train.gradient_checkpointing)",
                        f"gradient checkpointing {'on' if setting else 'off'}")
    size = f"{num_parameters / 1e9:.2g}B parameters"
    if num_parameters >= CHECKPOINTING_MIN_PARAMETERS:
        return Decision(True, f"{size} (7B-class): activations saved for backward rival the weights "
                              f"(Llama-3-8B, 2,048 tokens: 9.5 GiB without, 0.8 GiB with); {_COST}",
                        "gradient checkpointing on")
    if fit is None:
        return Decision(False, f"{size}, under {CHECKPOINTING_MIN_PARAMETERS / 1e9:.0f}B; free memory not weighed "
                               "(no estimate for this model or launch). For very long sequences set "
                               f"train.gradient_checkpointing: true ({_COST})", "gradient checkpointing off")
    gib = 1024**3
    need = (f"the longest batch ({fit.rows} x {fit.width} tokens) is estimated to need "
            f"{fit.without_checkpointing / gib:.1f} GiB beyond the loaded weights")
    share = fit.without_checkpointing / max(fit.available, 1)
    free = f"{fit.available / gib:.1f} GiB free ({fit.source})"
    if share <= CHECKPOINTING_MEMORY_SHARE:
        return Decision(False, f"{size}; {need}, {share:.0%} of the {free}; checkpointing from "
                               f"{CHECKPOINTING_MEMORY_SHARE:.0%}", "gradient checkpointing off")
    reason = (f"{need}, more than {CHECKPOINTING_MEMORY_SHARE:.0%} of the {free}; with it "
              f"{fit.with_checkpointing / gib:.1f} GiB; {_COST}")
    if fit.with_checkpointing > CHECKPOINTING_MEMORY_SHARE * fit.available:
        reason += (". Even that is tight: lower train.per_device_batch_size (raising gradient_accumulation_steps "
                   "keeps the batch) or data.max_length")
    return Decision(True, reason, "gradient checkpointing on")


def longest_batch_fit(config: RunConfig, decisions: Decisions, model: PreTrainedModel,
                      longest_example: int) -> StepFit | None:
    """The estimator's figure for this run's longest batch against free memory (None where it cannot say).

    Under torch.distributed every rank takes the least free memory of all, so that all decide alike
    (DDP with checkpointing on some ranks only would wait for the slowest every step).
    """
    available = available_memory(decisions.device.value)
    if available is None or sharded_training():  # sharded weights: the estimate's whole model per rank is wrong
        return None
    try:
        shape = shape_from_config(model.config)
        shape.adapted_layers(config.lora.target_modules)
    except ValueError:  # a model type, or a LoRA target (UnknownTargetModule), the estimator has no shape for
        return None
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        on = torch.device("cuda", torch.cuda.current_device()) if decisions.device.value == "cuda" else "cpu"
        least = torch.tensor([available[0]], dtype=torch.int64, device=on)
        torch.distributed.all_reduce(least, op=torch.distributed.ReduceOp.MIN)
        available = (int(least.item()), f"{available[1]}; the least of {torch.distributed.get_world_size()} ranks")
    causal_lm = config.model.task == "causal-lm"
    padded = config.train.pad_to_length if causal_lm else None  # the classification collator pads per batch
    width = padded or -(-longest_example // 8) * 8  # the collators pad to a multiple of 8
    value_bytes = precision_dtype(decisions.precision.value).itemsize
    method = {None: "lora", "4bit": "qlora-4bit", "8bit": "lora-8bit"}[config.model.quantization]
    return longest_step_fit(shape, method, config.train.per_device_batch_size, width, available,
                            lora_r=config.lora.r, lora_dropout=config.lora.dropout, vocab_logits=causal_lm,
                            target_modules=config.lora.target_modules, device=decisions.device.value,
                            optimizer="adamw-8bit" if "8bit" in decisions.optimizer.value else "adamw",
                            weight_dtype_bytes=value_bytes, activation_dtype_bytes=value_bytes)


def choose_trained_positions_loss(model: torch.nn.Module, args: TrainingArguments) -> Decision[bool]:
    """LM head and loss only from the first trained position on (`formatting.TrainedPositionsOnly`)?"""
    if not accepts_logits_to_keep(model):
        return Decision(False, f"{type(model).__name__}'s forward has no logits_to_keep", "loss on every position")
    if args.n_gpu > 1:  # nn.DataParallel would split the position index along with the batch
        return Decision(False, "several GPUs in one process (DataParallel)", "loss on every position")
    return Decision(True, "the prompt's positions have no labels, so the LM head and the loss over the "
                          "vocabulary skip them (logits_to_keep)", "loss on trained positions")


def frozen_weight_dtype(precision: str) -> torch.dtype:
    """dtype to store the frozen base weights in: the compute dtype.

    Only the adapters are updated, so the base needs no fp32 master copy. Storing it in bf16
    halves its memory and, on CPU, saves autocast from re-casting every frozen fp32 weight to
    bf16 in every forward and backward (autocast caches casts only for weights that require grad).
    The adapters stay fp32 (peft upcasts them), so updates are not lost to bf16 rounding.
    """
    return precision_dtype(precision)


def hardware_decisions(config: RunConfig) -> Decisions:
    """Device, precision and optimizer for this run, each logged with its reason.

    Also applies the host allocator setting (`environment.return_freed_tensors_to_os`, CPU only),
    which changes malloc for the whole process: it is a decision about this run's memory too.
    """
    device = choose_device()
    decisions = Decisions(device, choose_precision(config.train.precision, device.value),
                          choose_optimizer(config, device.value))
    for decision in (decisions.device, decisions.precision, decisions.optimizer,
                     return_freed_tensors_to_os(device.value, config.train.release_host_memory)):
        logger.info(str(decision))
    return decisions

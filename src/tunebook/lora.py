"""LoRA: train a low-rank update beside each frozen weight matrix.

For a frozen linear layer with weight W0 (d_out x d_in), LoRA computes

    h = W0·x + (alpha/r)·B·A·x,     A: r x d_in (random init),  B: d_out x r (B = 0 at init)

so at step 0 the model is exactly the base model, and training updates only A and B:
r·(d_in + d_out) parameters instead of d_in·d_out. The knobs:

- ``r`` (rank): capacity of the update. 8-16 suits narrow tasks; larger r rarely helps small data.
- ``alpha``: scales the update by alpha/r; alpha = 2r is a common default that keeps the effective
  learning rate roughly stable when you change r.
- ``dropout``: on the LoRA input only; 0.05-0.1 regularises several epochs on small data, but it
  costs a dropped-out copy of every adapted input (tunebook's SmolLM2 configs use 0 for speed).
- ``target_modules``: which linear layers get adapters. Adapting all attention *and* MLP
  projections (QLoRA paper) beats attention-only at the same parameter budget.

With a 4/8-bit base (QLoRA), W0 stays quantized and frozen; A and B are ordinary fp32 tensors (in
the base's dtype under FSDP/ZeRO-3), and gradients flow through the dequantized W0.
"""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from safetensors import safe_open
from transformers import PreTrainedModel
from transformers.pytorch_utils import Conv1D

from .config import LoraSettings
from .environment import sharded_training
from .errors import TunebookError
from .log import get_logger
from .pooling import check_adapter_pooling

logger = get_logger()

# Projection names per architecture (model.config.model_type). Heads (lm_head, classifier, score)
# are never adapted: a classification head is new and is trained fully (PEFT's modules_to_save).
TARGET_MODULES_BY_ARCHITECTURE: dict[str, list[str]] = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gemma": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    # BERT: attention query/key/value/output and the two MLP layers are all named "dense"
    # or after their role; "dense" also matches the pooler, which a classifier uses.
    "bert": ["query", "key", "value", "dense"],
    "distilbert": ["q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"],
    "roberta": ["query", "key", "value", "dense"],
}
_HEAD_NAMES = {"lm_head", "classifier", "score", "qa_outputs"}
_TASK_TYPES = {"causal-lm": TaskType.CAUSAL_LM, "sequence-classification": TaskType.SEQ_CLS}


class UnknownTargetModule(TunebookError, ValueError):
    """A requested LoRA target matches no linear layer of the model."""


def linear_layer_names(model: torch.nn.Module) -> list[str]:
    """Short names (last path component) of the model's linear layers, heads excluded, sorted.

    Quantized layers (bitsandbytes Linear4bit/Linear8bitLt) subclass nn.Linear, so they count.
    """
    names = {
        full.rsplit(".", 1)[-1]
        for full, module in model.named_modules()
        if isinstance(module, (torch.nn.Linear, Conv1D))  # GPT-2 style models use Conv1D
    }
    return sorted(names - _HEAD_NAMES)


def resolve_target_modules(model: torch.nn.Module, target_modules: list[str] | str = "auto") -> list[str]:
    """The layer names LoRA will adapt; raise :class:`UnknownTargetModule` for names that do not exist."""
    available = linear_layer_names(model)
    if target_modules == "auto":
        model_type = getattr(getattr(model, "config", None), "model_type", "")
        known = TARGET_MODULES_BY_ARCHITECTURE.get(model_type)
        # Unknown architecture: adapt every linear layer except the heads (QLoRA's "all-linear").
        return [name for name in known if name in available] if known else available
    if isinstance(target_modules, str):
        target_modules = [target_modules]
    missing = [name for name in target_modules if name not in available]
    if missing:
        raise UnknownTargetModule(
            f"LoRA target module(s) {missing} not found in this model. Linear layers it has: "
            f"{available}. Set lora.target_modules to some of these, or to 'auto'."
        )
    return list(target_modules)


def make_lora_config(
    model: torch.nn.Module, settings: LoraSettings | None = None, task: str = "causal-lm"
) -> LoraConfig:
    """A peft `LoraConfig` for `model` from tunebook's few settings."""
    settings = settings or LoraSettings()
    if task not in _TASK_TYPES:
        raise ValueError(f"Unknown task {task!r}; use one of {list(_TASK_TYPES)}.")
    return LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=resolve_target_modules(model, settings.target_modules),
        bias=settings.bias,
        task_type=_TASK_TYPES[task],
    )


def apply_lora(
    model: PreTrainedModel,
    settings: LoraSettings | None = None,
    task: str = "causal-lm",
    gradient_checkpointing: bool = False,
    verbose: bool = True,
) -> PeftModel:
    """Freeze `model`, add LoRA adapters, and return the trainable `PeftModel`.

    The same path serves full-precision and 4/8-bit bases. Unlike peft's
    `prepare_model_for_kbit_training`, the frozen unquantized weights (embeddings, lm_head, norms)
    stay in the dtype they were loaded in (the compute dtype) instead of being upcast to fp32: that
    upcast doubles the largest unquantized tensors (SmolLM2's 28M-parameter embedding: +57 MB on a
    ~110 MB 4-bit model) and breaks FSDP's uniform-dtype sharding. Stability does
    not need it: RMSNorm computes in fp32 internally, and the trained adapters stay fp32 (below).
    """
    config = make_lora_config(model, settings, task)
    if gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        # With every base weight frozen, checkpointed segments would see no input requiring grad.
        model.enable_input_require_grads()
    # Whatever is trained (adapters, a new classification head) keeps fp32 master weights even
    # when the frozen base is stored in bf16: bf16 would round small AdamW updates away. Under
    # FSDP/ZeRO-3 every sharded unit must hold one dtype, so the adapters keep the base's dtype and
    # the engine's mixed precision keeps the fp32 master copy instead (as TRL does).
    sharded = sharded_training() is not None
    peft_model = get_peft_model(model, config, autocast_adapter_dtype=not sharded)
    if not sharded:
        for param in peft_model.parameters():
            if param.requires_grad and param.dtype != torch.float32:
                param.data = param.data.float()
    if verbose:
        trainable, total = count_parameters(peft_model)
        logger.info(f"LoRA r={config.r} alpha={config.lora_alpha:g} on {sorted(config.target_modules)}: "
                    f"{trainable:,} trainable of {total:,} parameters ({100 * trainable / total:.2f}%)")
        if task == "sequence-classification":
            logger.info(f"the classification head ({model.config.num_labels} labels) is new: randomly "
                        "initialised and trained in full beside the adapter")
    return peft_model


def keep_adapter_input_dtype(model: torch.nn.Module) -> None:
    """Stop peft from casting each adapter's input to the adapters' fp32 dtype; for training under autocast.

    peft casts the (bf16) input of every adapted layer to fp32 before ``lora_A``, and autocast then
    casts it back to bf16 for the matmul: the result is the same bit for bit, but autograd keeps
    the extra copy of every adapter's input for the backward pass. Measured on SmolLM2 (batch 8 x
    440 tokens, bf16 autocast, LoRA on all 7 projections): tensors saved for backward 3.30 ->
    2.84 GB, peak memory 6.8 -> 5.7 GB, loss and gradients identical. Without autocast the input
    and adapter dtypes must match, so only training (which always runs under autocast when the base
    is stored in bf16/fp16) calls this.
    """
    for module in model.modules():
        if hasattr(module, "cast_input_dtype_enabled"):  # peft's BaseTunerLayer
            module.cast_input_dtype_enabled = False


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts. 4-bit weights are packed two per byte (four per bf16
    element when stored for FSDP), so count a `Params4bit` as its unpacked number of weights."""
    trainable = total = 0
    for param in model.parameters():
        n = param.numel()
        if param.__class__.__name__ == "Params4bit":
            n *= param.element_size() * 2
        total += n
        if param.requires_grad:
            trainable += n
    return trainable, total


class AdapterError(TunebookError):
    """A saved adapter cannot be attached to this base model."""


def check_adapter_files(adapter_dir: str | Path) -> None:
    """Stop with :class:`AdapterError` when the adapter's files are damaged (cut short, not JSON)."""
    import json

    adapter_dir = Path(adapter_dir)
    try:
        json.loads((adapter_dir / "adapter_config.json").read_text())
        weights = adapter_dir / "adapter_model.safetensors"
        if weights.is_file():
            with safe_open(str(weights), framework="pt"):  # reads the header, checks the file is fully covered
                pass
    except Exception as exc:  # noqa: BLE001 - json, OSError and safetensors' own error all mean "damaged"
        raise AdapterError(f"The adapter files in {adapter_dir} are damaged ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0][:120]}). Train again, or resume its run to save it anew."
                           ) from None


def _adapter_keys(adapter_dir: Path) -> list[str]:
    """Tensor names in an adapter's safetensors file (empty when there is none or it is unreadable:
    peft's own load then reports that)."""
    try:
        with safe_open(str(adapter_dir / "adapter_model.safetensors"), framework="pt") as f:
            return list(f.keys())
    except Exception:  # missing or damaged file: safetensors raises its own error types
        return []


def load_adapter(model: PreTrainedModel, adapter_dir: str, adapter_name: str = "default",
                 is_trainable: bool = False, in_base_dtype: bool = False) -> PeftModel:
    """Attach a saved adapter to a base model (inference by default).

    The two failures users meet, a damaged adapter file and an adapter trained on another base
    model (peft reports every mismatched tensor, hundreds of lines), become one message each.

    in_base_dtype: keep the adapter (and a trained head) in the base weights' dtype instead of
    peft's fp32 upcast. With a bf16 base, the adapter weights get the bf16 rounding that training's
    autocast gave them in every forward, and no fp32 matmuls or casts are left in the forward:
    MiniLM classification evaluation on CPU ran 2.8x as fast (benchmarks/README.md).
    Training and merging keep the default (fp32 adapters).
    """
    if problem := check_adapter_pooling(model, _adapter_keys(Path(adapter_dir)), adapter_dir):
        raise AdapterError(problem)
    try:
        return PeftModel.from_pretrained(model, adapter_dir, adapter_name=adapter_name, is_trainable=is_trainable,
                                         autocast_adapter_dtype=not in_base_dtype)
    except Exception as exc:  # safetensors, torch and peft raise their own types for the same two faults
        text = str(exc)
        if "size mismatch" in text:
            raise AdapterError(f"The adapter in {adapter_dir} was trained on another base model or LoRA shape than "
                               f"{getattr(model.config, 'name_or_path', 'this model')} ({text.count('size mismatch')} "
                               "tensors differ in shape). Use the model.name and lora settings of its run "
                               "(config.yaml next to the adapter).") from None
        if type(exc).__name__ in ("SafetensorError", "HeaderTooLarge", "JSONDecodeError") or "deserializ" in text:
            raise AdapterError(f"The adapter files in {adapter_dir} are damaged ({type(exc).__name__}: "
                               f"{text.splitlines()[0][:120]}). Train again, or resume its run to save it anew."
                               ) from None
        raise

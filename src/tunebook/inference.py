"""Use a trained adapter: load it for inference, merge it into the base, or serve several on one base.

Two ways to deploy a LoRA adapter:

- **Keep it separate** (:func:`load_for_inference`, :func:`load_adapters`): one copy of the base
  weights serves any number of adapters (a few MB each); switching task is :func:`set_active_adapter`.
  Each forward pass does the small extra ``B·A·x`` matmuls.
- **Merge it** (:func:`merge_adapter`): ``W = W0 + (alpha/r)·B·A`` is written into the weights, giving
  an ordinary model with no adapter overhead and no peft dependency, at the cost of one full copy
  of the weights per task. :func:`verify_merge` checks the merged model answers like the adapter.
"""

from __future__ import annotations

from pathlib import Path

import torch
from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .config import load_config
from .evaluation import generate
from .files import atomic_directory
from .formatting import encode_prompt
from .lora import load_adapter
from .models import load_model, load_tokenizer


def load_for_inference(base_name: str, adapter_dir: str | Path, quantization: str | None = None,
                       task: str = "causal-lm", **load_kwargs) -> tuple[PeftModel, PreTrainedTokenizerBase]:
    """Base model + adapter in eval mode, and the base's tokenizer.

    quantization: load the base in "4bit"/"8bit" (as a QLoRA adapter was trained) or full precision.
    """
    model = load_model(base_name, task, quantization=quantization, **load_kwargs)
    model = load_adapter(model, str(adapter_dir))
    return model.eval(), load_tokenizer(base_name)


def _run_quantization(adapter_dir: Path) -> str | None:
    """model.quantization of the training run that saved `adapter_dir` (its run folder's config.yaml)."""
    config_file = adapter_dir.parent / "config.yaml"
    return load_config(config_file).model.quantization if config_file.is_file() else None


def _merge_full_precision(base_name: str, adapter_dir: str | Path, quantization: str | None) -> PreTrainedModel:
    """fp32 base (dequantized when the adapter was trained on a quantized base) with the adapter merged in."""
    if quantization:
        base = load_model(base_name, quantization=quantization).dequantize(dtype=torch.float32)
    else:
        base = load_model(base_name, dtype=torch.float32)
    return load_adapter(base, str(adapter_dir)).merge_and_unload()


def merge_adapter(base_name: str, adapter_dir: str | Path, out_dir: str | Path,
                  quantization: str | None = "auto") -> Path:
    """Merge an adapter into full-precision base weights and save the result (safetensors + tokenizer).

    Why never merge into a 4-bit base: NF4 has 16 levels per block, and ``B·A`` is a small update,
    mostly smaller than the gap between two levels. Re-quantizing ``W0 + B·A`` to NF4 rounds much of
    the update away (and moves W0's own rounding), so the merged 4-bit model is *not* the model you
    trained (see :func:`merge_into_quantized_demo` for the size of the error).

    For a QLoRA adapter (quantization "4bit"/"8bit"; "auto" reads the run's config.yaml next to the
    adapter), the base is loaded quantized exactly as in training and then *dequantized* to full
    precision: the adapter learned to correct those dequantized weights, not the original ones, so
    ``dequant(W0) + B·A`` in fp32 reproduces the trained model. The output is a normal full-precision
    model (quantize it again for serving if you must, knowing it adds the error above).

    The folder is written next to `out_dir` and renamed into place, so a crash never leaves half a model.
    """
    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    if quantization == "auto":
        quantization = _run_quantization(adapter_dir)
    merged = _merge_full_precision(base_name, adapter_dir, quantization)
    with atomic_directory(out_dir) as staging:
        merged.save_pretrained(staging)  # safetensors (transformers 5 saves nothing else)
        load_tokenizer(base_name).save_pretrained(staging)
    return out_dir


def _logits(model: PreTrainedModel, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=torch.tensor([ids], device=next(model.parameters()).device)).logits[0].float().cpu()


def verify_merge(model_a: PreTrainedModel, model_b: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                 prompts: list[str] | list[list[int]], max_new_tokens: int = 20) -> dict:
    """Do two models (e.g. base + adapter vs merged) compute the same thing on `prompts`?

    Returns ``max_abs_logit_diff`` (over every position of every prompt, no padding, fp32: exact
    merges give ~1e-5, float rounding only) and ``greedy_identical`` (same greedy answers), with the
    answers of both models.
    """
    ids = [encode_prompt(tokenizer, p) if isinstance(p, str) else list(p) for p in prompts]
    model_a.eval()
    model_b.eval()
    diff = max(float((_logits(model_a, x) - _logits(model_b, x)).abs().max()) for x in ids)
    out_a = generate(model_a, tokenizer, ids, max_new_tokens, batch_size=len(ids), autocast=False, desc="model a")
    out_b = generate(model_b, tokenizer, ids, max_new_tokens, batch_size=len(ids), autocast=False, desc="model b")
    return {"max_abs_logit_diff": diff, "greedy_identical": out_a == out_b, "outputs_a": out_a, "outputs_b": out_b}


def merge_into_quantized_demo(base_name: str, adapter_dir: str | Path, tokenizer: PreTrainedTokenizerBase,
                              prompts: list[str] | list[list[int]]) -> dict:
    """Measure why a QLoRA adapter is merged into a *dequantized* base, and not anywhere else.

    Reference: the 4-bit base + adapter, unmerged (the model as trained). Returns the max abs logit
    difference to it of three merges:

    - ``dequantized_merge``: dequant(NF4 W0) + B·A in fp32 (:func:`merge_adapter`'s way); what is
      left is rounding (the reference computes in bf16, and bitsandbytes' CPU kernels dequantize
      NF4 blocks to bf16; ~0.006 on a tiny model, fp32 compute did not shrink it);
    - ``quantized_merge``: peft merging into the NF4 layers, which rounds W0 + B·A back to NF4;
    - ``full_precision_base_merge``: the original fp32 W0 + B·A; the adapter was trained to correct
      the NF4 weights, so adding it to the unquantized ones is a different model too.
    """
    ids = [encode_prompt(tokenizer, p) if isinstance(p, str) else list(p) for p in prompts]

    def logits(model: PreTrainedModel) -> list[torch.Tensor]:
        model.eval()
        return [_logits(model, x) for x in ids]

    def max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
        return max(float((x - y).abs().max()) for x, y in zip(a, b))

    reference = logits(load_for_inference(base_name, adapter_dir, quantization="4bit")[0])
    dequantized_merge = logits(_merge_full_precision(base_name, adapter_dir, "4bit"))
    quantized = load_for_inference(base_name, adapter_dir, quantization="4bit")[0].merge_and_unload()
    merges = {"dequantized_merge": dequantized_merge, "quantized_merge": logits(quantized),
              "full_precision_base_merge": logits(_merge_full_precision(base_name, adapter_dir, None))}
    return {f"{name}_max_logit_diff": max_diff(reference, value) for name, value in merges.items()}


def load_adapters(base_name: str, adapters: dict[str, str | Path], quantization: str | None = None,
                  task: str = "causal-lm", **load_kwargs) -> PeftModel:
    """One base model carrying several named adapters; the first one is active.

    The base weights are stored once, so N tasks cost one base plus N small adapters instead of N
    merged copies (compare with :func:`model_memory_bytes`).
    """
    if not adapters:
        raise ValueError("load_adapters needs at least one {name: adapter_dir}.")
    (first, first_dir), *rest = adapters.items()
    model = load_adapter(load_model(base_name, task, quantization=quantization, **load_kwargs), str(first_dir),
                         adapter_name=first)
    for name, adapter_dir in rest:
        model.load_adapter(str(adapter_dir), adapter_name=name)
    model.set_adapter(first)
    return model.eval()


def set_active_adapter(model: PeftModel, name: str) -> None:
    """Route every following forward pass through adapter `name` (the others stay loaded, unused)."""
    if name not in model.peft_config:
        raise ValueError(f"No adapter named {name!r}; loaded adapters: {sorted(model.peft_config)}.")
    model.set_adapter(name)


def model_memory_bytes(model: torch.nn.Module) -> int:
    """Bytes held by the model's parameters and buffers (tied weights counted once).

    4/8-bit weights count their packed bytes plus their quantization constants (per-block scales).
    """
    total, seen = 0, set()
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        total += tensor.numel() * tensor.element_size()
        state = getattr(tensor, "quant_state", None)  # bitsandbytes 4-bit: absmax (+ nested state2)
        while state is not None:
            total += state.absmax.numel() * state.absmax.element_size()
            state = getattr(state, "state2", None)
        scb = getattr(tensor, "SCB", None)  # bitsandbytes 8-bit: per-row scales
        if isinstance(scb, torch.Tensor):
            total += scb.numel() * scb.element_size()
    return total

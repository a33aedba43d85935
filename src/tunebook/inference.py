"""Use a trained adapter: generate with it, load it for inference, merge it into the base, or serve
several on one base.

:func:`generate` answers prompts greedily in batches of similar length; it and the helpers beside it
(`evaluation_mode`, `autocast_for`, `batches_by_length`) are also what :mod:`tunebook.evaluation`
runs its forward passes with, so that a score and an answer you generate yourself come from the
same code.

Two ways to deploy a LoRA adapter:

- **Keep it separate** (:func:`load_for_inference`, :func:`load_adapters`): one copy of the base
  weights serves any number of adapters (a few MB each); switching task is :func:`set_active_adapter`.
  Each forward pass does the small extra ``B·A·x`` matmuls.
- **Merge it** (:func:`merge_adapter`): ``W = W0 + (alpha/r)·B·A`` is written into the weights, giving
  an ordinary model with no adapter overhead and no peft dependency, at the cost of one full copy
  of the weights per task. :func:`verify_merge` checks the merged model answers like the adapter.
"""

from __future__ import annotations

import contextlib
import statistics
from pathlib import Path
from typing import Iterator

import torch
from peft import PeftModel
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .config import load_config
from .environment import choose_precision
from .files import atomic_directory
from .formatting import encode_prompt, stop_token_ids
from .lora import load_adapter
from .models import load_model, load_tokenizer


def autocast_for(model: torch.nn.Module, enabled: bool | None) -> contextlib.AbstractContextManager:
    """bf16 autocast when the precision decision says bf16 and the weights are fp32.

    On a CPU with avx512_bf16/AMX, bf16 matmuls run up to about twice as fast as fp32, and the fp32
    master weights stay untouched. GPUs already hold bf16/fp16 weights (see `load_model`), so
    autocast would change nothing there. ``enabled=False`` forces exact fp32 (tests, merge checks).
    """
    param = next(model.parameters())
    if enabled is None:
        enabled = choose_precision("auto", param.device.type).value == "bf16" and param.dtype == torch.float32
    return torch.autocast(param.device.type, dtype=torch.bfloat16, enabled=bool(enabled))


@contextlib.contextmanager
def evaluation_mode(model: torch.nn.Module) -> Iterator[None]:
    """eval() (dropout off) + no autograd for the block, then restore the model's previous mode."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


@contextlib.contextmanager
def _contiguous_lm_head_input(model: PreTrainedModel) -> Iterator[None]:
    """Hand the output layer a contiguous input while generating, to dodge a slow PyTorch path.

    For the first token, generate asks for the last position's logits only (``logits_to_keep=1``),
    a non-contiguous [batch, 1, hidden] slice. With a frozen output weight (a peft model, a merged
    one) ``F.linear`` then takes a batched-matmul path that copies the weight once per row
    (pytorch/pytorch#186148): 1.8 GB and ~2.5 s per batch of 32 for SmolLM2's 49k x 576 head on
    this CPU, against 5 ms for the same product from a contiguous input (a 37 KB copy).
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        yield
        return
    handle = head.register_forward_pre_hook(lambda _module, args: (args[0].contiguous(), *args[1:]))
    try:
        yield
    finally:
        handle.remove()


def batches_by_length(lengths: list[int], batch_size: int, token_budget: bool = False) -> list[list[int]]:
    """Row indices in batches of similar length (longest first), so each batch pads little.

    With `token_budget`, a batch also stops before rows x its longest row would exceed a full batch
    of median-length rows: the long tail comes in smaller batches instead of padding `batch_size`
    rows to the longest one (measured on SMS spam at batch 64: 26 % of the positions computed were
    padding, 9 % with the budget). For one forward pass only: generation keeps full batches, as
    its cost is decoding steps x batches.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    budget = batch_size * max(1, statistics.median_low(lengths)) if token_budget and lengths else None
    batches: list[list[int]] = []
    for i in order:
        batch = batches[-1] if batches else []
        if batch and len(batch) < batch_size and (budget is None or (len(batch) + 1) * lengths[batch[0]] <= budget):
            batch.append(i)
        else:
            batches.append([i])
    return batches


def generate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[list[int]] | list[str],
             max_new_tokens: int = 96, batch_size: int = 16, autocast: bool | None = None,
             desc: str = "generate", cut_rows: list[int] | None = None) -> list[str]:
    """Greedy answers to `prompts` (token ids, or prompt texts from `formatting.build_prompt`).

    Returns only the newly generated text, special tokens stripped, in the order of `prompts`.
    Prompts are batched by length so each batch pads little; generation stops at the chat
    template's end-of-turn token (`formatting.stop_token_ids`), the token training taught.
    `cut_rows`, if given, receives the indices of the prompts whose answer reached
    `max_new_tokens` before an end-of-turn token (cut, not finished).
    """
    ids = [encode_prompt(tokenizer, p) if isinstance(p, str) else list(p) for p in prompts]
    device = next(model.parameters()).device
    outputs: list[str] = [""] * len(ids)
    stop = stop_token_ids(tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop[0]
    with evaluation_mode(model), autocast_for(model, autocast), _contiguous_lm_head_input(model), \
            tqdm(total=len(ids), desc=desc, unit="row") as bar:  # rows/s; TQDM_DISABLE=1 hides it
        for batch in batches_by_length([len(x) for x in ids], batch_size):
            # LEFT padding: a decoder appends each new token after the last position of the row.
            # With right padding, a short prompt would be followed by pad tokens and the model would
            # continue after them. The attention mask hides the pads; generate derives positions from it.
            inputs = tokenizer.pad({"input_ids": [ids[i] for i in batch]}, padding_side="left",
                                   return_tensors="pt").to(device)
            new = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                 eos_token_id=stop, pad_token_id=pad_id)[:, inputs["input_ids"].shape[1]:]
            for i, row in zip(batch, new):
                outputs[i] = tokenizer.decode(row, skip_special_tokens=True).strip()
                if cut_rows is not None and len(row) == max_new_tokens and not set(row.tolist()) & set(stop):
                    cut_rows.append(i)
            bar.update(len(batch))
    return outputs


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

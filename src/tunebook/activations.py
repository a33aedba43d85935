"""Leaner activations for training: RMSNorm and SwiGLU that keep less for the backward pass.

Autograd keeps, for every layer, the tensors its backward pass will need. In a Llama-style
decoder two small ops keep more than they must:

* **RMSNorm** (``w * (x / rms(x))``, computed in fp32) keeps an fp32 copy of its bf16 input:
  4 bytes a value where the input's own 2 would do, twice per layer.
* **SwiGLU** (``silu(gate) * up``) keeps ``gate``, ``up`` *and* ``silu(gate)``: the third is one
  sigmoid away from the first.

The versions here compute the same forward, bit for bit, and keep only the bf16 input (plus one
fp32 number per token) and ``gate`` and ``up``; backward recomputes the rest. Measured on
SmolLM2-135M at batch 8 x 470 tokens with LoRA on every projection: tensors kept for backward
2,636 -> 2,057 MiB (-22 %). The backward passes repeat autograd's ops in autograd's order, so
under bf16 autocast (how tunebook trains) the loss and every gradient are bit-identical to the
stock modules', with or without gradient checkpointing (tests/test_activations.py); in pure fp32
the norm's gradient differs at fp32 rounding. It is the idea of the fused kernels of Liger or
Unsloth, written in plain PyTorch ops so that it runs wherever the model runs (not measured on a
GPU or under FSDP here).

Only modules that compute exactly Llama's RMSNorm and SiLU-gated MLP are changed (their forward's
source must equal ``LlamaRMSNorm.forward`` / ``LlamaMLP.forward``: Llama, Mistral, Qwen2,
SmolLM2 ...); any other model is left as it is.
"""

from __future__ import annotations

import inspect
import types

import torch
import torch.nn.functional as F
from transformers.activations import SiLUActivation
from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm

from .log import get_logger

logger = get_logger()
_SILU = (torch.nn.SiLU, SiLUActivation)  # transformers' ACT2FN["silu"] is SiLUActivation (F.silu)


class _RMSNorm(torch.autograd.Function):
    """``weight * (x * rsqrt(mean(x^2) + eps))`` in fp32, rounded to x's dtype before the weight."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        x32 = x.to(torch.float32)
        rstd = torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
        ctx.save_for_backward(x, weight, rstd)  # x in its own dtype (bf16: half of the fp32 copy)
        return weight * (x32 * rstd).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        x, weight, rstd = ctx.saved_tensors
        x32 = x.to(torch.float32)
        normed = (x32 * rstd).to(x.dtype)
        grad_weight = None
        if ctx.needs_input_grad[1]:
            grad_weight = (grad * normed).reshape(-1, weight.shape[-1]).sum(0).to(weight.dtype)
        # autograd's chain, op for op: mul -> cast -> mul(x32, rstd) -> rsqrt -> mean -> pow.
        grad_normed = (grad * weight).to(torch.float32)
        grad_rstd = (grad_normed * x32).sum(-1, keepdim=True)
        grad_mean = -0.5 * grad_rstd * rstd.pow(3)
        grad_x = grad_normed * rstd + (grad_mean.expand_as(x32) / x32.shape[-1]) * 2.0 * x32
        return grad_x.to(x.dtype), grad_weight, None


class _SiluMul(torch.autograd.Function):
    """``silu(gate) * up``, keeping gate and up only; silu(gate) is recomputed in backward."""

    @staticmethod
    def forward(ctx, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(gate, up)
        return F.silu(gate) * up

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gate, up = ctx.saved_tensors
        grad_up = grad * F.silu(gate)
        grad_gate = torch.ops.aten.silu_backward(grad * up, gate)
        return grad_gate, grad_up


def _rmsnorm_forward(self: torch.nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    return _RMSNorm.apply(hidden_states, self.weight, self.variance_epsilon)


def _swiglu_forward(self: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return self.down_proj(_SiluMul.apply(self.gate_proj(x), self.up_proj(x)))


def _same_source(method: object, reference: object) -> bool:
    try:
        return inspect.getsource(method) == inspect.getsource(reference)
    except (OSError, TypeError):  # no source (compiled, built at runtime): not known to be the same
        return False


def use_lean_activations(model: torch.nn.Module, verbose: bool = True) -> dict[str, int]:
    """Swap in the leaner RMSNorm and SwiGLU on every module that computes exactly Llama's.

    Changes the modules' ``forward`` in place (the weights are untouched, so saved adapters,
    merging and evaluation are unaffected) and returns how many of each were changed.
    """
    changed = {"rmsnorm": 0, "swiglu": 0}
    for module in model.modules():
        if _same_source(type(module).forward, LlamaRMSNorm.forward):
            module.forward = types.MethodType(_rmsnorm_forward, module)
            changed["rmsnorm"] += 1
        elif (_same_source(type(module).forward, LlamaMLP.forward)
              and type(getattr(module, "act_fn", None)) in _SILU):
            module.forward = types.MethodType(_swiglu_forward, module)
            changed["swiglu"] += 1
    if verbose and any(changed.values()):
        logger.info(f"activations: {changed['rmsnorm']} RMSNorms keep their input instead of an fp32 copy and "
                    f"{changed['swiglu']} SwiGLU MLPs recompute silu(gate) in backward: the same gradients, "
                    "about a fifth less memory kept for backward (tunebook.activations)")
    return changed

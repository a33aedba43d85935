"""Leaner activations for training: RMSNorm, SwiGLU, the loss and dropout that keep less for the backward pass.

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

The loss over the vocabulary is the third: transformers' causal-LM loss upcasts the logits to
fp32 and keeps the fp32 log-probabilities for backward, then backward builds two more fp32 tensors
of the same size: 4 x 4 bytes per trained position and vocabulary entry, 2.8 GB at 8 x 448
positions of SmolLM2's 49,152 entries, beside 0.7 GB for the logits themselves (fp32). Where the
answers are long (instruction data: most of a row is answer) that is the largest single item of a
step. `chunked_causal_lm_loss` computes the same loss a chunk of rows at a time, in fp32, keeping
one fp32 number per row (the log-sum-exp) besides the logits; backward writes the gradient chunk
by chunk into one tensor of the logits' size. It runs inside the model's forward (transformers
calls ``model.loss_function``), so DDP, FSDP and DeepSpeed see an ordinary forward. Unlike the
fused linear + cross-entropy kernels (Liger's), the logits are still formed once, in the
compute dtype: no recomputation of the LM head's matmul.

Dropout is the fourth, on a CPU: ``F.dropout`` there keeps its mask as a tensor of the input's
dtype (4 bytes a value in fp32), where CUDA's fused kernel keeps one byte, and draws it with
``bernoulli_``, which outside Intel CPUs (where PyTorch uses MKL's vectorized generator) is a
serial loop: on MiniLM-L6 with LoRA (dropout 0.1 in the encoder and the adapters) on an AMD EPYC,
one training step drew 56 masks and ``bernoulli_`` took 23-25 % of the step. `use_lean_dropout`
makes every ``nn.Dropout`` module a `LeanDropout`: training on a CPU, it keeps a bool mask (one
byte a value), drawn by ``bernoulli_`` on Intel and from 31-bit random integers elsewhere (2x
faster there). The same distribution (a value is kept with probability 1 - p and scaled by
1 / (1 - p)), not the same random draws as ``F.dropout``: a run with dropout moves within its
noise. On a GPU, in evaluation, and for dropout that is no ``nn.Dropout`` call (BERT's attention
dropout, applied inside SDPA) PyTorch's own runs.

Only modules that compute exactly Llama's RMSNorm and SiLU-gated MLP are changed (their forward's
source must equal ``LlamaRMSNorm.forward`` / ``LlamaMLP.forward``: Llama, Mistral, Qwen2,
SmolLM2 ...); any other model is left as it is. The loss is swapped on models whose loss is
transformers' own ``ForCausalLMLoss`` (every ``...ForCausalLM``), and nowhere else.
"""

from __future__ import annotations

import inspect
import types

import torch
import torch.nn.functional as F
from transformers.activations import SiLUActivation
from transformers.loss.loss_utils import LOSS_MAPPING
from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm

from .environment import cpu_vendor
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


class _ChunkedCrossEntropy(torch.autograd.Function):
    """Sum over rows of ``logsumexp(logits) - logits[target]`` (rows whose target is ignored add 0)."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, ignore_index: int, chunk_rows: int
                ) -> torch.Tensor:
        kept = targets != ignore_index
        targets = targets.masked_fill(~kept, 0)  # any valid index; its row is multiplied by 0
        logsumexp = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
        total = torch.zeros((), dtype=torch.float32, device=logits.device)
        for start in range(0, logits.shape[0], chunk_rows):
            rows = slice(start, start + chunk_rows)
            chunk = logits[rows].float()
            logsumexp[rows] = torch.logsumexp(chunk, dim=-1)
            picked = chunk.gather(1, targets[rows, None]).squeeze(1)
            total += ((logsumexp[rows] - picked) * kept[rows]).sum()
        ctx.save_for_backward(logits, targets, kept, logsumexp)
        ctx.chunk_rows = chunk_rows
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        logits, targets, kept, logsumexp = ctx.saved_tensors
        grad_logits = torch.empty_like(logits)
        for start in range(0, logits.shape[0], ctx.chunk_rows):
            rows = slice(start, start + ctx.chunk_rows)
            # d/dx (logsumexp(x) - x[t]) = softmax(x) - onehot(t), per kept row, times the upstream grad
            probs = torch.exp(logits[rows].float() - logsumexp[rows, None])
            probs.scatter_add_(1, targets[rows, None], probs.new_full((probs.shape[0], 1), -1.0))
            grad_logits[rows] = (probs * (grad * kept[rows])[:, None]).to(logits.dtype)
        return grad_logits, None, None, None


CHUNK_VALUES = 1 << 24  # fp32 values per chunk: 64 MiB, 341 rows of a 49,152-entry vocabulary


def chunked_causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor | None, vocab_size: int,
                           num_items_in_batch: torch.Tensor | int | None = None, ignore_index: int = -100,
                           shift_labels: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
    """transformers' ``ForCausalLMLoss`` (same arguments, same value) without its full fp32 copies.

    Labels are shifted left by one (the logit at position t predicts token t + 1); the mean is
    over the labelled positions, or the sum divided by ``num_items_in_batch`` when the Trainer
    passes it (gradient accumulation counts every micro-batch's tokens once).
    """
    if shift_labels is None:
        shift_labels = F.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    logits = logits.reshape(-1, vocab_size)
    targets = shift_labels.reshape(-1).to(logits.device)
    total = _ChunkedCrossEntropy.apply(logits, targets, ignore_index, max(1, CHUNK_VALUES // vocab_size))
    if num_items_in_batch is None:
        return total / (targets != ignore_index).sum()
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch


# PyTorch's CPU bernoulli_ draws with MKL's vectorized, multi-threaded generator on Intel CPUs and
# in a serial loop elsewhere, where drawing 31-bit integers (random_ on int32) is 2x faster.
_VECTORIZED_BERNOULLI = torch.backends.mkl.is_available() and cpu_vendor() == "GenuineIntel"


def _keep_mask(shape: torch.Size, p: float, device: torch.device) -> torch.Tensor:
    """A bool tensor, True with probability 1 - p."""
    if _VECTORIZED_BERNOULLI:
        return torch.empty(shape, dtype=torch.bool, device=device).bernoulli_(1 - p)
    # random_ on int32 is uniform over [0, 2^31): below round(p * 2^31) with probability p (to 2^-31).
    dropped_below = min(round(p * 2**31), 2**31 - 1)
    return torch.empty(shape, dtype=torch.int32, device=device).random_() >= dropped_below


class _ByteMaskDropout(torch.autograd.Function):
    """Inverted dropout with p in (0, 1) that keeps a bool mask (1 byte a value) for backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        keep = _keep_mask(x.shape, p, x.device)
        ctx.save_for_backward(keep)
        ctx.scale = 1.0 / (1.0 - p)
        return x.mul(keep).mul_(ctx.scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (keep,) = ctx.saved_tensors
        return grad.mul(keep).mul_(ctx.scale), None


class LeanDropout(torch.nn.Dropout):
    """``nn.Dropout`` that keeps a 1-byte mask when training on a CPU (see the module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # p is a plain attribute that may change after the swap: p = 1 (the 1 / (1 - p) scaling
        # would divide by zero) and p = 0 (nothing to mask) go to F.dropout, and so does inplace=True,
        # which promises to write into x where the byte-mask path returns a new tensor.
        if self.training and x.device.type == "cpu" and 0 < self.p < 1 and not self.inplace:
            return _ByteMaskDropout.apply(x, self.p)
        return super().forward(x)


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
    """Swap in the leaner RMSNorm and SwiGLU on every module that computes exactly Llama's, and the chunked loss.

    Changes the modules' ``forward`` in place (the weights are untouched, so saved adapters,
    merging and evaluation are unaffected) and returns how many of each were changed.
    """
    changed = {"rmsnorm": 0, "swiglu": 0, "loss": 0}
    if getattr(model, "loss_type", None) == "ForCausalLM" and model.loss_function is LOSS_MAPPING["ForCausalLM"]:
        model.loss_function = chunked_causal_lm_loss
        changed["loss"] = 1
    for module in model.modules():
        if _same_source(type(module).forward, LlamaRMSNorm.forward):
            module.forward = types.MethodType(_rmsnorm_forward, module)
            changed["rmsnorm"] += 1
        elif (_same_source(type(module).forward, LlamaMLP.forward)
              and type(getattr(module, "act_fn", None)) in _SILU):
            module.forward = types.MethodType(_swiglu_forward, module)
            changed["swiglu"] += 1
    if verbose and any(changed.values()):
        kept_less = []
        if changed["rmsnorm"] or changed["swiglu"]:
            kept_less.append(f"{changed['rmsnorm']} RMSNorms keep their input instead of an fp32 copy and "
                             f"{changed['swiglu']} SwiGLU MLPs recompute silu(gate) in backward")
        if changed["loss"]:
            kept_less.append("the loss over the vocabulary runs in chunks, without full fp32 copies of the logits")
        logger.info(f"activations: {'; '.join(kept_less)}. The same loss and gradients, less memory kept for "
                    "backward (tunebook.activations)")
    return changed


def use_lean_dropout(model: torch.nn.Module, verbose: bool = True) -> int:
    """Make every ``nn.Dropout`` with 0 < p < 1 (the model's and LoRA's) a `LeanDropout`; returns how many.

    Call it once the adapters exist (their dropout modules are created with them). Only the class
    changes (p and the weights stay), so the model still pickles, saves and merges as before.
    """
    changed = 0
    for module in model.modules():
        if type(module) is torch.nn.Dropout and 0 < module.p < 1 and not module.inplace:
            module.__class__ = LeanDropout
            changed += 1
    if verbose and changed:
        logger.info(f"activations: {changed} nn.Dropout modules made LeanDropout: training on a CPU, each keeps a "
                    "1-byte mask (F.dropout keeps one of the input's dtype); the same distribution, other random "
                    "draws (tunebook.activations)")
    return changed

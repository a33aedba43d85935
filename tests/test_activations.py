"""Leaner RMSNorm and SwiGLU: the same loss and gradients as the stock modules, less kept for backward."""

from __future__ import annotations

import copy

import pytest
import torch

from tunebook.activations import use_lean_activations
from tunebook.config import LoraSettings
from tunebook.lora import apply_lora, keep_adapter_input_dtype


def _loss_grads_and_saved_bytes(model: torch.nn.Module, lean: bool, dtype: torch.dtype,
                                checkpointing: bool = False) -> tuple:
    """Loss, every gradient (adapters and the trainable norms) and the bytes autograd kept for backward."""
    model = copy.deepcopy(model).to(dtype)
    if lean:
        assert use_lean_activations(model, verbose=False) == {"rmsnorm": 5, "swiglu": 2}  # 2 layers x 2 + final
    torch.manual_seed(0)  # LoRA's A matrices are random: the same in both runs
    model = apply_lora(model, LoraSettings(r=4, alpha=8, dropout=0.0), gradient_checkpointing=checkpointing,
                       verbose=False)
    model.train(checkpointing)  # transformers checkpoints layers only in training mode
    keep_adapter_input_dtype(model)
    for name, param in model.named_parameters():
        if "lora_B" in name:  # B = 0 at init would make every base-side gradient zero
            torch.nn.init.normal_(param, std=0.5, generator=torch.Generator().manual_seed(1))
        if "norm" in name:  # the norm weights' own gradient is checked too
            param.requires_grad_(True)
    ids = torch.randint(0, model.config.vocab_size, (3, 40), generator=torch.Generator().manual_seed(2))
    storages: dict[int, int] = {}

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t), \
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        # The decoder only: the tiny model's 49k-word LM head would outweigh its layers' activations.
        hidden = model.base_model.model.model(input_ids=ids).last_hidden_state
        probe = torch.randn(hidden.shape, generator=torch.Generator().manual_seed(3))
        loss = (hidden.float() * probe).mean()  # a random direction: every input gets a gradient
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    return loss.item(), grads, sum(storages.values())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_lean_activations_give_the_same_gradients_and_keep_less(tiny_llama, dtype) -> None:
    loss, grads, saved = _loss_grads_and_saved_bytes(tiny_llama, lean=False, dtype=dtype)
    lean_loss, lean_grads, lean_saved = _loss_grads_and_saved_bytes(tiny_llama, lean=True, dtype=dtype)
    assert lean_loss == loss
    assert grads.keys() == lean_grads.keys() and any("norm" in n for n in grads)
    # bf16 (training's case): bit for bit, the backward repeats autograd's ops in autograd's order;
    # fp32: the stock norm's .to(float32) is a no-op there, so autograd sums in another order.
    exact = {"rtol": 0, "atol": 0} if dtype == torch.bfloat16 else {"rtol": 1e-5, "atol": 1e-7}
    for name in grads:
        torch.testing.assert_close(lean_grads[name], grads[name], **exact, msg=name)
    # bf16: the norms' fp32 input copies go (4 -> 2 bytes a value) and silu(gate) is not kept.
    assert lean_saved < (0.9 if dtype == torch.bfloat16 else 0.95) * saved


def test_lean_activations_under_gradient_checkpointing(tiny_llama) -> None:
    # Checkpointed layers run their forward twice (once without keeping anything): same gradients.
    _, grads, saved = _loss_grads_and_saved_bytes(tiny_llama, lean=False, dtype=torch.bfloat16, checkpointing=True)
    _, lean_grads, _ = _loss_grads_and_saved_bytes(tiny_llama, lean=True, dtype=torch.bfloat16, checkpointing=True)
    _, _, saved_without = _loss_grads_and_saved_bytes(tiny_llama, lean=False, dtype=torch.bfloat16)
    assert saved < 0.5 * saved_without  # checkpointing is really on
    for name in grads:
        torch.testing.assert_close(lean_grads[name], grads[name], rtol=0, atol=0, msg=name)


def test_other_models_are_left_alone(tiny_bert) -> None:
    before = {name: type(m).forward for name, m in tiny_bert.named_modules()}
    assert use_lean_activations(tiny_bert, verbose=False) == {"rmsnorm": 0, "swiglu": 0}
    assert all("forward" not in vars(m) for m in tiny_bert.modules())
    assert before == {name: type(m).forward for name, m in tiny_bert.named_modules()}


def test_inference_output_is_unchanged(tiny_llama) -> None:
    ids = torch.arange(5, 45).reshape(2, 20)
    with torch.no_grad():
        expected = tiny_llama(input_ids=ids).logits
        use_lean_activations(tiny_llama, verbose=False)
        assert torch.equal(tiny_llama(input_ids=ids).logits, expected)

"""Leaner RMSNorm, SwiGLU and loss: the same loss and gradients as the stock modules, less kept for backward.
Lean dropout: the same distribution as F.dropout with a 1-byte mask."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from transformers.loss.loss_utils import ForCausalLMLoss

import tunebook.activations
from tunebook.activations import LeanDropout, chunked_causal_lm_loss, use_lean_activations, use_lean_dropout
from tunebook.config import LoraSettings
from tunebook.lora import apply_lora, keep_adapter_input_dtype


def _loss_grads_and_saved_bytes(model: torch.nn.Module, lean: bool, dtype: torch.dtype,
                                checkpointing: bool = False) -> tuple:
    """Loss, every gradient (adapters and the trainable norms) and the bytes autograd kept for backward."""
    model = copy.deepcopy(model).to(dtype)
    if lean:
        # 2 layers x 2 norms + the final one
        assert use_lean_activations(model, verbose=False) == {"rmsnorm": 5, "swiglu": 2, "loss": 1}
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
    assert use_lean_activations(tiny_bert, verbose=False) == {"rmsnorm": 0, "swiglu": 0, "loss": 0}
    assert "_loss_function" not in vars(tiny_bert)  # a classifier keeps its own loss
    assert all("forward" not in vars(m) for m in tiny_bert.modules())
    assert before == {name: type(m).forward for name, m in tiny_bert.named_modules()}


def test_inference_output_is_unchanged(tiny_llama) -> None:
    ids = torch.arange(5, 45).reshape(2, 20)
    with torch.no_grad():
        expected = tiny_llama(input_ids=ids).logits
        use_lean_activations(tiny_llama, verbose=False)
        assert torch.equal(tiny_llama(input_ids=ids).logits, expected)


def _saved_bytes_loss_and_grad(loss_fn, logits, labels, **kwargs) -> tuple[int, torch.Tensor, torch.Tensor]:
    logits = logits.detach().requires_grad_(True)
    storages: dict[int, int] = {}

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        loss = loss_fn(logits, labels, vocab_size=logits.shape[-1], **kwargs)
    loss.backward()
    return sum(storages.values()), loss.detach(), logits.grad


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("num_items_in_batch", [None, 50])
def test_chunked_loss_matches_transformers_causal_lm_loss(monkeypatch, dtype, num_items_in_batch) -> None:
    monkeypatch.setattr(tunebook.activations, "CHUNK_VALUES", 7 * 1000)  # 7 rows a chunk: 4 chunks + a remainder
    generator = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(3, 11, 1000, generator=generator)).to(dtype)
    labels = torch.randint(0, 1000, (3, 11), generator=generator)
    labels[0, :4] = -100  # a prompt
    labels[2, 7:] = -100  # padding
    kwargs = {} if num_items_in_batch is None else {"num_items_in_batch": torch.tensor(num_items_in_batch)}
    saved, loss, grad = _saved_bytes_loss_and_grad(ForCausalLMLoss, logits, labels, **kwargs)
    lean_saved, lean_loss, lean_grad = _saved_bytes_loss_and_grad(chunked_causal_lm_loss, logits, labels, **kwargs)
    assert lean_loss.dtype == loss.dtype == torch.float32
    torch.testing.assert_close(lean_loss, loss, rtol=1e-6, atol=0)
    assert lean_grad.dtype == dtype
    torch.testing.assert_close(lean_grad, grad)  # the dtype's default tolerance: rounding, not a different sum
    assert torch.all(lean_grad[0, :3] == 0) and torch.all(lean_grad[2, 6:] == 0)  # nothing from ignored labels
    # transformers keeps the fp32 log-probabilities (4 bytes a value); the chunked loss keeps the
    # logits in their own dtype (2 bytes in bf16) and one fp32 number per row.
    assert lean_saved < (0.55 if dtype == torch.bfloat16 else 1.05) * saved


def test_chunked_loss_in_the_model_gives_the_same_loss_and_adapter_gradients(tiny_llama) -> None:
    ids = torch.randint(0, tiny_llama.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(4))
    labels = ids.masked_fill(torch.arange(24) < 10, -100)  # a 10-token prompt

    def loss_and_grads(lean: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model = copy.deepcopy(tiny_llama)
        if lean:
            use_lean_activations(model, verbose=False)
            assert model.loss_function is chunked_causal_lm_loss
        torch.manual_seed(0)
        model = apply_lora(model, LoraSettings(r=4, alpha=8, dropout=0.0), verbose=False)
        for name, param in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(param, std=0.5, generator=torch.Generator().manual_seed(1))
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    loss, grads = loss_and_grads(lean=False)
    lean_loss, lean_grads = loss_and_grads(lean=True)
    torch.testing.assert_close(lean_loss, loss, rtol=1e-6, atol=0)
    assert grads.keys() == lean_grads.keys() and len(grads) > 0
    for name in grads:
        torch.testing.assert_close(lean_grads[name], grads[name], rtol=1e-4, atol=1e-6, msg=name)


def _saved_bytes(forward) -> tuple[torch.Tensor, int]:
    storages: dict[int, int] = {}

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        out = forward()
    return out, sum(storages.values())


@pytest.mark.parametrize("vectorized_bernoulli", [True, False])  # both ways of drawing, on any CPU
def test_lean_dropout_has_dropouts_distribution_and_keeps_a_byte_mask(monkeypatch, vectorized_bernoulli) -> None:
    monkeypatch.setattr(tunebook.activations, "_VECTORIZED_BERNOULLI", vectorized_bernoulli)
    p, rows, cols = 0.1, 1000, 400
    stock, lean = torch.nn.Dropout(p), torch.nn.Dropout(p)
    assert use_lean_dropout(lean, verbose=False) == 1 and isinstance(lean, LeanDropout)
    x = torch.randn(rows, cols, requires_grad=True)
    torch.manual_seed(0)
    out, saved = _saved_bytes(lambda: lean(x))
    _, stock_saved = _saved_bytes(lambda: stock(x))
    assert saved == rows * cols and stock_saved == 4 * rows * cols  # a bool mask; F.dropout's fp32 one
    kept = out != 0
    # kept with probability 1 - p: within 5 standard deviations of 400,000 draws (+-0.0024)
    assert abs(kept.float().mean().item() - (1 - p)) < 5 * (p * (1 - p) / (rows * cols)) ** 0.5
    torch.testing.assert_close(out[kept], x[kept] / (1 - p))  # inverted dropout's scaling (to rounding)
    grad = torch.randn(rows, cols)
    out.backward(grad)
    torch.testing.assert_close(x.grad, grad * kept / (1 - p))  # backward uses the same mask
    torch.manual_seed(0)
    assert torch.equal(lean(x) != 0, kept)  # seeded: the same mask again
    assert not torch.equal(lean(x) != 0, kept)  # and a new one on the next call
    half, half_saved = _saved_bytes(lambda: lean(x.detach().bfloat16().requires_grad_(True)))
    assert half.dtype == torch.bfloat16 and half_saved == rows * cols  # bf16 in, bf16 out, the same 1-byte mask
    lean.eval()
    assert torch.equal(lean(x), x)  # evaluation: no dropout
    restored = pickle.loads(pickle.dumps(lean))  # torch.save(model) and spawned workers pickle modules
    assert type(restored) is LeanDropout and restored.p == p


def test_lean_dropout_leaves_other_dropouts_alone() -> None:
    model = torch.nn.Sequential(torch.nn.Dropout(0.0), torch.nn.Dropout(1.0), torch.nn.Dropout(0.1, inplace=True),
                                torch.nn.Dropout1d(0.1), torch.nn.AlphaDropout(0.1), torch.nn.Dropout(0.2))
    assert use_lean_dropout(model, verbose=False) == 1
    assert [type(m).__name__ for m in model] == ["Dropout", "Dropout", "Dropout", "Dropout1d", "AlphaDropout",
                                                 "LeanDropout"]


@pytest.mark.parametrize("p", [0.0, 1.0])
def test_lean_dropout_whose_p_is_later_set_to_0_or_1_behaves_as_dropout(p) -> None:
    lean = torch.nn.Dropout(0.1)
    assert use_lean_dropout(lean, verbose=False) == 1 and type(lean) is LeanDropout
    lean.p = p  # e.g. a user turning dropout off (or all the way up) on a model already prepared
    x = torch.randn(50, 40, requires_grad=True)
    out = lean(x)  # p = 1 divided by zero in the byte-mask path (NaN everywhere)
    out.sum().backward()
    expected = x if p == 0 else torch.zeros_like(x)
    assert torch.equal(out, expected) and torch.equal(x.grad, torch.full_like(x, 1.0 - p))


def test_lean_dropout_set_to_inplace_later_writes_into_its_input() -> None:
    lean = torch.nn.Dropout(0.5)
    assert use_lean_dropout(lean, verbose=False) == 1
    lean.inplace = True
    x = torch.ones(100, 100)
    assert lean(x) is x and bool((x == 0).any())  # F.dropout(inplace=True): the same tensor, changed


def test_lean_dropout_in_a_lora_encoder_is_checkpoint_safe(tiny_bert) -> None:
    """Every dropout with p > 0 (the encoder's, LoRA's) is changed; a checkpointed layer redraws the same masks."""
    ids = torch.randint(5, 128, (4, 30), generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 3])

    def loss_and_grads(checkpointing: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        torch.manual_seed(0)
        model = apply_lora(copy.deepcopy(tiny_bert), LoraSettings(r=4, alpha=8, dropout=0.1),
                           task="sequence-classification", gradient_checkpointing=checkpointing, verbose=False)
        dropouts = [m for m in model.modules() if type(m) is torch.nn.Dropout and m.p > 0]
        assert use_lean_dropout(model, verbose=False) == len(dropouts) > 2 * 6  # 6 adapted layers a block
        assert all(type(m) is LeanDropout for m in dropouts)
        model.train()
        layer_dropout = model.base_model.model.bert.encoder.layer[0].output.dropout
        calls = []
        layer_dropout.register_forward_hook(lambda *args: calls.append(1))
        torch.manual_seed(1)
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        assert len(calls) == (2 if checkpointing else 1)  # a checkpointed layer runs its forward again
        return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    loss, grads = loss_and_grads(checkpointing=False)
    checkpointed_loss, checkpointed_grads = loss_and_grads(checkpointing=True)
    assert torch.equal(checkpointed_loss, loss) and grads.keys() == checkpointed_grads.keys()
    for name in grads:
        torch.testing.assert_close(checkpointed_grads[name], grads[name], msg=name)

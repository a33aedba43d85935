"""Inference helpers: adapter round trip, merging (and checking the merge), several adapters on one base.

A tiny random Llama is saved to a temporary folder so it loads through `tunebook.models.load_model`
like a real model; its LoRA B matrices are set to random values (B = 0 at init would make the
adapter a no-op, and every merge check would pass trivially).
"""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_llama

from tunebook.config import LoraSettings
from tunebook.formatting import build_prompt, encode_prompt
from tunebook.inference import (
    generate,
    load_adapters,
    load_for_inference,
    merge_adapter,
    merge_into_quantized_demo,
    model_memory_bytes,
    set_active_adapter,
    verify_merge,
)
from tunebook.lora import apply_lora
from tunebook.models import load_model

QUESTIONS = ["Extract the entities: Ada Lovelace visited Paris.", "Hi!",
             "Where did Grace Hopper speak in May 1985, and for which organisation?"]


@pytest.fixture(scope="module")
def tokenizer(smollm_tokenizer):
    return smollm_tokenizer  # shared (session-scoped): never mutated here


@pytest.fixture(scope="module")
def prompts(tokenizer) -> list[str]:
    return [build_prompt(tokenizer, [{"role": "user", "content": q}]) for q in QUESTIONS]


@pytest.fixture(scope="module")
def base_dir(tokenizer, tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-base")
    make_tiny_llama(len(tokenizer), pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                    eos_token_id=tokenizer.eos_token_id).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def make_adapter(base_dir: str, path, seed: int):
    """Save a LoRA adapter with random (non-zero) B; return the in-memory PeftModel too."""
    torch.manual_seed(seed)
    model = apply_lora(load_model(base_dir), LoraSettings(r=8, alpha=16, dropout=0.0), verbose=False)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.05)
    model.save_pretrained(path)
    return model.eval()


@pytest.fixture(scope="module")
def adapter(base_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("adapter-a")
    return str(path), make_adapter(base_dir, path, seed=1)


def logits(model, tokenizer, prompt: str) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([encode_prompt(tokenizer, prompt)])).logits[0]


def test_adapter_round_trip_gives_same_outputs(base_dir, adapter, tokenizer, prompts):
    adapter_dir, in_memory = adapter
    reloaded, reloaded_tokenizer = load_for_inference(base_dir, adapter_dir)
    assert not reloaded.training and reloaded_tokenizer.pad_token_id is not None
    base = load_model(base_dir)
    for prompt in prompts:
        assert torch.equal(logits(in_memory, tokenizer, prompt), logits(reloaded, tokenizer, prompt))
        assert (logits(reloaded, tokenizer, prompt) - logits(base, tokenizer, prompt)).abs().max() > 1e-2
    assert generate(in_memory, tokenizer, prompts, 6, 3, autocast=False) == \
        generate(reloaded, tokenizer, prompts, 6, 3, autocast=False)


def test_merged_model_matches_adapter(base_dir, adapter, tokenizer, prompts, tmp_path):
    adapter_dir, _ = adapter
    out = merge_adapter(base_dir, adapter_dir, tmp_path / "merged")
    names = {p.name for p in out.iterdir()}
    assert "model.safetensors" in names and "tokenizer.json" in names and "adapter_config.json" not in names
    assert [p.name for p in tmp_path.iterdir()] == ["merged"]  # no staging folder left behind
    merged = load_model(str(out))
    assert not any("lora" in name for name, _ in merged.named_parameters())
    check = verify_merge(load_for_inference(base_dir, adapter_dir)[0], merged, tokenizer, prompts, max_new_tokens=8)
    assert check["max_abs_logit_diff"] < 1e-4
    assert check["greedy_identical"] and all(check["outputs_a"])
    # Merging again over an existing folder replaces it atomically.
    assert merge_adapter(base_dir, adapter_dir, out) == out and (out / "model.safetensors").is_file()


def test_two_adapters_on_one_base(base_dir, adapter, tokenizer, prompts, tmp_path):
    adapter_a, model_a = adapter
    adapter_b = tmp_path / "adapter-b"
    model_b = make_adapter(base_dir, adapter_b, seed=2)
    both = load_adapters(base_dir, {"a": adapter_a, "b": str(adapter_b)})
    prompt = prompts[0]
    assert torch.allclose(logits(both, tokenizer, prompt), logits(model_a, tokenizer, prompt), atol=1e-5)
    set_active_adapter(both, "b")
    assert torch.allclose(logits(both, tokenizer, prompt), logits(model_b, tokenizer, prompt), atol=1e-5)
    with pytest.raises(ValueError, match="loaded adapters: \\['a', 'b'\\]"):
        set_active_adapter(both, "c")
    # One base + two adapters is far smaller than two merged copies of the model.
    merged = load_model(str(merge_adapter(base_dir, adapter_a, tmp_path / "merged")))
    assert model_memory_bytes(both) < 1.2 * model_memory_bytes(merged) < 2 * model_memory_bytes(merged)


def test_model_memory_bytes_counts_parameters_and_buffers():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    # Linear: 12 + 3 weights; BatchNorm: 3 + 3 parameters, 3 + 3 + 1 buffers; fp32 except the int64 counter.
    assert model_memory_bytes(model) == (15 + 6 + 6) * 4 + 8
    tied = torch.nn.Linear(4, 4, bias=False)
    assert model_memory_bytes(torch.nn.ModuleList([tied, tied])) == 16 * 4


def test_merging_into_4bit_base_is_lossy(base_dir, adapter, tokenizer, prompts):
    pytest.importorskip("bitsandbytes")
    errors = merge_into_quantized_demo(base_dir, adapter[0], tokenizer, prompts[:2])
    # Seen: dequantized 0.006 (bf16 rounding), quantized 0.13, fp32 base 0.11.
    exact = errors["dequantized_merge_max_logit_diff"]
    assert errors["quantized_merge_max_logit_diff"] > 3 * exact
    assert errors["full_precision_base_merge_max_logit_diff"] > 3 * exact

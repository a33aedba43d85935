"""Each decision tunebook makes for a run, tested at its threshold and for every branch.

Gradient checkpointing (by parameter count and by the longest batch's estimated memory), precision
(by device and CPU flags), optimizer (by quantization and device), device (by CUDA), and the
divergence guard (by how far the loss rose).
"""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from tunebook import environment
from tunebook.config import RunConfig, apply_overrides
from tunebook.decisions import (
    CHECKPOINTING_MIN_PARAMETERS,
    Decisions,
    choose_gradient_checkpointing,
    choose_optimizer,
    frozen_weight_dtype,
    hardware_decisions,
    longest_batch_fit,
)
from tunebook.environment import choose_device, choose_precision, precision_dtype
from tunebook.errors import ConfigError
from tunebook.memory import StepFit
from tunebook.trainer import DivergenceGuard, TrainingDiverged

# ---------------------------------------------------------------- gradient checkpointing


def test_checkpointing_threshold_is_5_billion_parameters() -> None:
    """Llama-2-7B (6.7B) and up get it; 3B models do not. The number itself is part of the contract."""
    assert CHECKPOINTING_MIN_PARAMETERS == 5e9


@pytest.mark.parametrize("parameters, on", [
    (int(CHECKPOINTING_MIN_PARAMETERS) - 1, False),
    (int(CHECKPOINTING_MIN_PARAMETERS), True),
    (int(CHECKPOINTING_MIN_PARAMETERS) + 1, True),
    (135_000_000, False),  # SmolLM2
    (6_738_415_616, True),  # Llama-2-7B
])
def test_auto_checkpointing_at_the_threshold(parameters: int, on: bool) -> None:
    decision = choose_gradient_checkpointing("auto", parameters)
    assert decision.value is on
    assert str(decision).startswith(f"gradient checkpointing {'on' if on else 'off'}: ")
    assert f"{parameters / 1e9:.2g}B parameters" in decision.reason
    if not on:
        assert "under 5B" in decision.reason


@pytest.mark.parametrize("setting", [True, False])
@pytest.mark.parametrize("parameters", [1, 10**11])
def test_explicit_checkpointing_wins_over_size(setting: bool, parameters: int) -> None:
    decision = choose_gradient_checkpointing(setting, parameters)
    assert decision.value is setting
    assert decision.reason == "asked for in the config (train.gradient_checkpointing)"
    assert decision.label == f"gradient checkpointing {'on' if setting else 'off'}"


def _fit(without_gib: float, available_gib: float) -> StepFit:
    gib = 1024**3
    return StepFit(8, 488, int(without_gib * gib), int(without_gib * gib / 3), int(available_gib * gib), "MemAvailable")


@pytest.mark.parametrize("without_gib, available_gib, on", [
    (6.0, 24.0, False),  # SmolLM2's instruction batch in fp32 on this 24 GiB machine
    (6.0, 8.0, False),  # exactly 75 %
    (6.1, 8.0, True),  # an 8 GB laptop
    (0.3, 0.1, True),
])
def test_auto_checkpointing_when_the_longest_batch_would_not_fit(without_gib, available_gib, on) -> None:
    decision = choose_gradient_checkpointing("auto", 135_000_000, _fit(without_gib, available_gib))
    assert decision.value is on
    need = f"the longest batch (8 x 488 tokens) is estimated to need {without_gib:.1f} GiB beyond the loaded weights"
    assert need in decision.reason
    assert f"{available_gib:.1f} GiB free (MemAvailable)" in decision.reason
    assert ("more than 75%" in decision.reason) is on
    if on:
        assert f"with it {without_gib / 3:.1f} GiB" in decision.reason
        assert ("Even that is tight" in decision.reason) is (without_gib / 3 > 0.75 * available_gib)
    else:
        assert f"{without_gib / available_gib:.0%} of the" in decision.reason
        assert "checkpointing from 75%" in decision.reason


def test_size_and_the_config_still_decide_over_memory() -> None:
    assert choose_gradient_checkpointing("auto", 7_000_000_000, _fit(0.1, 100.0)).value is True
    assert choose_gradient_checkpointing(False, 135_000_000, _fit(10.0, 1.0)).value is False
    unweighed = choose_gradient_checkpointing("auto", 135_000_000, None)
    assert unweighed.value is False and "free memory not weighed" in unweighed.reason


def test_build_model_checkpoints_when_memory_is_short(smollm_tokenizer, monkeypatch, capsys) -> None:
    """The run's longest example is weighed against free memory: a tiny model, a tiny 'free' figure."""
    import copy

    from conftest import make_tiny_llama

    from tunebook import train

    base = make_tiny_llama(len(smollm_tokenizer))
    monkeypatch.setattr(train, "load_model", lambda *a, **k: copy.deepcopy(base))
    config = RunConfig()
    decisions = Decisions(choose_device(), choose_precision("fp32", "cpu"), choose_optimizer(config, "cpu"))
    for free, on in ((2**20, True), (2**40, False)):
        monkeypatch.setattr("tunebook.decisions.available_memory", lambda device, free=free: (free, "MemAvailable"))
        model = train.build_model(config, decisions, None, longest_example=250)
        assert model.base_model.model.is_gradient_checkpointing is on
        out = capsys.readouterr().out
        assert f"gradient checkpointing {'on' if on else 'off'}: " in out
        assert "the longest batch (8 x 256 tokens)" in out  # 250 tokens padded to a multiple of 8
    monkeypatch.setattr("tunebook.decisions.available_memory", lambda device: (2**20, "MemAvailable"))
    assert not train.build_model(config, decisions, None).base_model.model.is_gradient_checkpointing  # no lengths


def test_no_memory_figure_where_the_estimator_has_no_shape(monkeypatch) -> None:
    """Model types and LoRA targets the estimator does not know leave 'auto' to the parameter count."""
    from conftest import make_tiny_llama
    from transformers import GPT2Config, GPT2LMHeadModel

    monkeypatch.setattr("tunebook.decisions.available_memory", lambda device: (2**30, "MemAvailable"))
    config = RunConfig()
    decisions = Decisions(choose_device(), choose_precision("fp32", "cpu"), choose_optimizer(config, "cpu"))
    llama = make_tiny_llama(100)
    assert longest_batch_fit(config, decisions, llama, 100).width == 104
    unknown_target = apply_overrides(config, {"lora.target_modules": ["c_attn"]})
    assert longest_batch_fit(unknown_target, decisions, llama, 100) is None
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100))
    assert longest_batch_fit(config, decisions, gpt2, 100) is None
    monkeypatch.setattr("tunebook.decisions.available_memory", lambda device: None)  # e.g. macOS: no /proc/meminfo
    assert longest_batch_fit(config, decisions, llama, 100) is None
    monkeypatch.setattr("tunebook.decisions.available_memory", lambda device: (2**30, "MemAvailable"))
    monkeypatch.setattr("tunebook.decisions.sharded_training", lambda: "fsdp")  # each rank holds a shard, not the model
    assert longest_batch_fit(config, decisions, llama, 100) is None


def test_longest_batch_fit_follows_the_run_config(monkeypatch) -> None:
    """Padding, quantization, optimizer, dtype and task reach the estimate as `train` runs them."""
    from conftest import make_tiny_llama

    from tunebook.memory import estimate_memory, shape_from_config

    monkeypatch.setattr("tunebook.decisions.available_memory", lambda device: (2**30, "MemAvailable"))
    llama = make_tiny_llama(100)
    shape = shape_from_config(llama.config)
    for overrides, method, optimizer, value_bytes, width, vocab_logits in (
            ({}, "lora", "adamw_torch", 4, 104, True),
            ({"train.pad_to_length": 256}, "lora", "adamw_torch", 4, 256, True),
            ({"model.quantization": "4bit"}, "qlora-4bit", "paged_adamw_8bit", 2, 104, True),
            ({"model.quantization": "8bit"}, "lora-8bit", "adamw_torch", 2, 104, True),
            ({"model.task": "sequence-classification", "data.recipe": "classification", "train.pad_to_length": 256},
             "lora", "adamw_torch", 4, 104, False)):
        config = apply_overrides(RunConfig(), {"lora.dropout": 0.1, **overrides})
        precision = "fp32" if value_bytes == 4 else "bf16"
        decisions = Decisions(environment.Decision("cpu", "test"), environment.Decision(precision, "test"),
                              environment.Decision(optimizer, "test"))
        fit = longest_batch_fit(config, decisions, llama, 100)
        expected = estimate_memory(shape, method, batch_size=8, seq_len=width, lora_dropout=0.1, device="cpu",
                                   optimizer="adamw-8bit" if "8bit" in optimizer else "adamw",
                                   weight_dtype_bytes=value_bytes, activation_dtype_bytes=value_bytes,
                                   vocab_logits=vocab_logits)
        assert (fit.rows, fit.width, fit.without_checkpointing) == (8, width, expected.beyond_loaded_weights), overrides


def test_available_memory_on_a_gpu_counts_pytorchs_cached_blocks(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda: (10 * 2**30, 80 * 2**30))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda: 5 * 2**30)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda: 3 * 2**30)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda: "NVIDIA H100")
    assert environment.available_memory("cuda") == (12 * 2**30, "free on NVIDIA H100")


def test_available_memory_reads_meminfo_and_the_cgroup_limit(tmp_path, monkeypatch) -> None:
    """MemAvailable, lowered to the tightest cgroup (limit - usage) from the process's group up."""
    proc = {"/proc/meminfo": "MemTotal:       32000000 kB\nMemAvailable:   20000000 kB\n",
            "/proc/self/cgroup": "4:memory:/jobs/run1\n0::/\n"}
    real_open = open

    def fake_open(path, *args, **kwargs):
        if str(path) in proc:
            (tmp_path / "proc").write_text(proc[str(path)])
            return real_open(tmp_path / "proc", *args, **kwargs)
        if str(path).startswith("/proc/"):
            raise FileNotFoundError(path)
        return real_open(path, *args, **kwargs)

    v1, v2 = tmp_path / "memory", tmp_path / "unified"
    monkeypatch.setattr(environment, "_CGROUP_MEMORY_FILES", {
        "v2": (str(v2), "memory.max", "memory.current", "inactive_file"),
        "v1": (str(v1), "memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")})
    gib = 1024**3

    def group(folder, limit, usage):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "memory.limit_in_bytes").write_text(f"{limit}\n")
        (folder / "memory.usage_in_bytes").write_text(f"{usage}\n")

    group(v1, 2**63 - 4096, 5 * gib)  # the root: no limit
    group(v1 / "jobs", 12 * gib, 5 * gib)  # the parent: 7 GiB left
    group(v1 / "jobs" / "run1", 2**63 - 4096, 1 * gib)  # the process's own group: no limit of its own
    v2.mkdir()
    (v2 / "memory.max").write_text("max\n")
    (v2 / "memory.current").write_text(f"{gib}\n")
    monkeypatch.setattr("builtins.open", fake_open)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert environment.available_memory("cpu") == (7 * gib, "the cgroup's memory limit")
    group(v1 / "jobs", 40 * gib, 5 * gib)  # a limit above MemAvailable does not count
    assert environment.available_memory("cpu") == (20000000 * 1024, "MemAvailable")
    proc["/proc/self/cgroup"] = "4:memory:/docker/abc\n"  # Docker mounts its own group as the root
    (v1 / "memory.limit_in_bytes").write_text(f"{6 * gib}\n")
    assert environment.available_memory("cpu") == (1 * gib, "the cgroup's memory limit")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert environment.available_memory("cpu") == (gib // 2, "the cgroup's memory limit, shared by 2 processes")
    proc["/proc/self/cgroup"] = "0::/job\n"  # cgroup v2, a numeric limit; the droppable page cache counts as free
    (v2 / "job").mkdir()
    (v2 / "job" / "memory.max").write_text(f"{4 * gib}\n")
    (v2 / "job" / "memory.current").write_text(f"{3 * gib}\n")
    (v2 / "job" / "memory.stat").write_text(f"anon {gib}\ninactive_file {2 * gib}\nactive_file 0\n")
    assert environment.available_memory("cpu") == (3 * gib // 2, "the cgroup's memory limit, shared by 2 processes")
    (v2 / "job" / "memory.current").write_text(f"{7 * gib}\n")  # over the limit (v1 allows it briefly)
    (v2 / "job" / "memory.stat").write_text("inactive_file 0\n")
    assert environment.available_memory("cpu") == (0, "the cgroup's memory limit, shared by 2 processes")
    del proc["/proc/meminfo"]  # macOS
    assert environment.available_memory("cpu") is None


# ---------------------------------------------------------------- optimizer


@pytest.mark.parametrize("quantization, device, expected", [
    ("4bit", "cuda", "paged_adamw_8bit"),
    ("4bit", "cpu", "adamw_torch"),  # paging needs CUDA unified memory
    ("8bit", "cuda", "adamw_torch"),
    (None, "cuda", "adamw_torch"),
    (None, "cpu", "adamw_torch"),
])
def test_auto_optimizer(quantization, device: str, expected: str) -> None:
    config = apply_overrides(RunConfig(), {"model.quantization": quantization})
    decision = choose_optimizer(config, device)
    assert decision.value == expected
    assert ("QLoRA on CUDA" in decision.reason) is (expected == "paged_adamw_8bit")


@pytest.mark.parametrize("optim", ["adamw_torch_fused", "sgd", "adamw_8bit"])
def test_explicit_optimizer_is_kept(optim: str) -> None:
    config = apply_overrides(RunConfig(), {"train.optim": optim, "model.quantization": "4bit"})
    decision = choose_optimizer(config, "cuda")
    assert decision.value == optim and decision.reason == "asked for in the config (train.optim)"


# ---------------------------------------------------------------- device and precision


def test_choose_device_with_a_gpu(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "Test GPU 80GB")
    decision = choose_device()
    assert decision.value == "cuda" and decision.reason == "CUDA GPU found: Test GPU 80GB"


def test_choose_device_without_a_gpu(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert choose_device().value == "cpu"


@pytest.mark.parametrize("flags, expected, named", [
    ({"amx_bf16"}, "bf16", "amx_bf16"),
    ({"avx512_bf16", "avx512f"}, "bf16", "avx512_bf16"),
    ({"amx_bf16", "avx512_bf16"}, "bf16", "amx_bf16/avx512_bf16"),
    ({"avx512f", "avx2", "amx_int8"}, "fp32", None),
])
def test_auto_precision_on_cpu_follows_the_bf16_flags(monkeypatch, flags, expected, named) -> None:
    monkeypatch.setattr(environment, "cpu_flags", lambda: set(flags))
    decision = choose_precision("auto", "cpu")
    assert decision.value == expected
    if named:
        assert f"CPU supports {named} " in decision.reason


def test_auto_precision_without_a_device_asks_choose_device(monkeypatch) -> None:
    monkeypatch.setattr(environment, "choose_device", lambda: environment.Decision("cuda", "test"))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: not including_emulation)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "GPU")
    assert choose_precision("auto").value == "bf16"


def test_emulated_bf16_on_a_gpu_means_fp16(monkeypatch) -> None:
    """T4/V100 report bf16 support only with emulation: fp16 with loss scaling is chosen."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "Tesla T4")
    decision = choose_precision("auto", "cuda")
    assert decision.value == "fp16" and "Tesla T4 lacks bf16" in decision.reason


@pytest.mark.parametrize("requested", ["bf16", "fp32"])
@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_requested_precision_is_kept(requested: str, device: str) -> None:
    decision = choose_precision(requested, device)
    assert decision.value == requested and decision.reason == "asked for in the config (train.precision)"


def test_fp16_needs_cuda() -> None:
    assert choose_precision("fp16", "cuda").value == "fp16"
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        choose_precision("fp16", "cpu")


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16),
                                              ("fp32", torch.float32)])
def test_frozen_weights_are_stored_in_the_compute_dtype(precision: str, dtype: torch.dtype) -> None:
    assert precision_dtype(precision) is dtype and frozen_weight_dtype(precision) is dtype


# ---------------------------------------------------------------- divergence guard


def _log(guard: DivergenceGuard, losses: list[float]) -> None:
    for step, loss in enumerate(losses, start=1):
        guard.on_log(None, SimpleNamespace(global_step=step), None, logs={"loss": loss})


@pytest.mark.parametrize("losses, stops", [
    ([0.5, 1.4], False),  # over twice the first loss, but not one nat more
    ([0.5, 1.6], True),  # both
    ([3.0, 5.0], False),  # one nat more, but not twice
    ([3.0, 6.1], True),
    ([3.0, 6.0], False),  # exactly twice: not above it
    ([2.0, 3.0], False),
    ([2.0, 1.0, float("nan")], True),
    ([float("inf")], True),
    ([8.0], False),  # a first loss alone never stops, however high
])
def test_divergence_guard_threshold(losses: list[float], stops: bool) -> None:
    guard = DivergenceGuard(learning_rate=0.5)
    if stops:
        with pytest.raises(TrainingDiverged, match=f"step {len(losses)}") as info:
            _log(guard, losses)
        assert "train.learning_rate=0.5 is too high" in str(info.value)
    else:
        _log(guard, losses)
        assert [loss for _, loss in guard.history] == losses


def test_divergence_guard_ignores_logs_without_a_loss() -> None:
    guard = DivergenceGuard(learning_rate=1e-3)
    guard.on_log(None, SimpleNamespace(global_step=1), None, logs={"eval_loss": 99.0})
    guard.on_log(None, SimpleNamespace(global_step=1), None, logs=None)
    assert guard.history == []


def test_divergence_message_in_full() -> None:
    guard = DivergenceGuard(learning_rate=0.05)
    with pytest.raises(TrainingDiverged) as info:
        _log(guard, [2.0, 2.1, 2.2, 2.3, 2.4, 2.5, 2.6, 9.0])
    assert str(info.value) == (
        "Training diverged at step 8: the loss went from 2 to 9 (step 3: 2.2, step 4: 2.3, step 5: 2.4, step 6: 2.5, "
        "step 7: 2.6, step 8: 9). Likely cause: train.learning_rate=0.05 is too high (LoRA trains well at 1e-4 to "
        "2e-3). The adapter was not saved; lower the rate and train again.")


def test_nan_loss_stops_at_the_step_it_happens(smollm_tokenizer, tmp_path) -> None:
    from conftest import make_tiny_llama
    from transformers import TrainingArguments

    from tunebook.config import LoraSettings
    from tunebook.lora import apply_lora
    from tunebook.trainer import TunebookTrainer

    tok = smollm_tokenizer
    model = make_tiny_llama(len(tok), pad_token_id=tok.pad_token_id)
    with torch.no_grad():
        model.model.norm.weight[0] = float("nan")
    model = apply_lora(model, LoraSettings(r=2), verbose=False)
    trainer = TunebookTrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), max_steps=1, use_cpu=True,
                                                                   report_to="none"))
    trainer.current_gradient_accumulation_steps = 1
    trainer.state.global_step = 6
    ids = torch.tensor([[1, 2, 3, 4]])
    with pytest.raises(TrainingDiverged) as info:
        trainer.training_step(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids})
    assert str(info.value) == (
        "Loss became nan at step 7. Lower train.learning_rate, try train.precision: fp32, or check the data for "
        "empty answers. The adapter was not saved; checkpoints before this step are kept.")
    assert trainer.trained_tokens == 0 and trainer.batch_log == []  # a diverged step is not counted


def test_hardware_decisions_on_a_gpu(monkeypatch) -> None:
    monkeypatch.setattr("tunebook.decisions.choose_device", lambda: environment.Decision("cuda", "test GPU"))
    config = apply_overrides(RunConfig(), {"model.quantization": "4bit", "train.precision": "bf16"})
    decisions = hardware_decisions(config)
    assert (decisions.device.value, decisions.precision.value, decisions.optimizer.value) == (
        "cuda", "bf16", "paged_adamw_8bit")


def test_only_the_main_process_describes_the_adapter(smollm_tokenizer, monkeypatch, capsys) -> None:
    import copy

    from conftest import make_tiny_llama

    from tunebook import train

    base = make_tiny_llama(len(smollm_tokenizer))
    monkeypatch.setattr(train, "load_model", lambda *a, **k: copy.deepcopy(base))
    config = RunConfig()
    decisions = Decisions(choose_device(), choose_precision("fp32", "cpu"), choose_optimizer(config, "cpu"))
    for main, says in ((True, True), (False, False)):
        monkeypatch.setattr(train, "is_main_process", lambda: main)
        train.build_model(config, decisions, None)
        assert ("LoRA r=16 alpha=32 on" in capsys.readouterr().out) is says


# ---------------------------------------------------------------- host allocator


_FREED_TENSORS_PROBE = """
import sys, torch
from tunebook.environment import return_freed_tensors_to_os

def resident_mib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024

if sys.argv[1] == "release":
    print(return_freed_tensors_to_os("cpu"))
for _ in range(3):
    before = resident_mib()
    tensor = torch.ones(4 << 20)  # 16 MiB, every page written
    grown = resident_mib() - before
    del tensor
    print(f"{grown:.1f} {resident_mib() - before:.1f}")
"""


@pytest.mark.skipif(not environment.platform.libc_ver()[0] == "glibc", reason="glibc's allocator only")
def test_freed_tensors_go_back_to_the_os_on_a_cpu() -> None:
    # A fresh process, as a training run is: in this one, earlier tests left free heap blocks that
    # glibc would hand out again whatever the threshold.
    def run(mode: str) -> list[str]:
        result = subprocess.run([sys.executable, "-c", _FREED_TENSORS_PROBE, mode], capture_output=True,
                                text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        return result.stdout.splitlines()

    released = run("release")
    assert released[0].startswith("host allocator: tensors of 1 MiB or more")
    kept = [tuple(map(float, line.split())) for line in run("glibc")]
    after = [tuple(map(float, line.split())) for line in released[1:]]
    # The first round also pays one-off allocations (4.3 MiB measured); compare the later ones.
    assert all(grown > 14 for grown, _ in after) and all(left < 1 for _, left in after[1:])
    # Without it, glibc raises its threshold at the first free: the second 16 MiB tensor stays
    # resident (15-16 MiB measured; the third may reuse its block, so it is not checked).
    assert kept[1][1] > 12


@pytest.mark.parametrize("device, enabled, environ, reason", [
    ("cuda", True, {}, "the tensors live on the GPU"),
    ("cpu", False, {}, "train.release_host_memory is false"),
    ("cpu", True, {"MALLOC_MMAP_THRESHOLD_": "65536"}, "MALLOC_MMAP_THRESHOLD_ is set in the environment"),
])
def test_host_allocator_is_left_alone(monkeypatch, device: str, enabled: bool, environ: dict, reason: str) -> None:
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(environment.ctypes, "CDLL", lambda *_: pytest.fail("mallopt must not be called"))
    decision = environment.return_freed_tensors_to_os(device, enabled)
    assert decision.value is False and str(decision) == f"host allocator unchanged: {reason}"

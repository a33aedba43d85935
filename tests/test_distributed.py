"""Several processes through `accelerate launch`, checked on the CPU: the path from one device to many GPUs.

`configs/accelerate/cpu_two_processes.yaml` starts two ranks that talk over gloo, exactly as two
GPUs would over NCCL: same Trainer, same data sharding, same gradient averaging, same
main-process-only saving and printing. The run is compared with one process that sees the same
*global* batch (2 processes x 2 examples vs 1 process x 4 examples): DDP averages the gradients
over the ranks and the Trainer normalises the loss by the tokens of the whole global batch, so
the two runs take the same optimizer steps and their losses agree to float rounding (measured:
~1e-7 relative; the tolerance below is 1e-4).

The accelerate YAML files are also checked with accelerate's own config loader.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO_ROOT, write_rows
from safetensors import safe_open

from tunebook.config import RunConfig, apply_overrides, load_config, save_config
from tunebook.train import run_training

ACCELERATE_DIR = REPO_ROOT / "configs" / "accelerate"
ACCELERATE_CONFIGS = ["single_gpu", "multi_gpu_ddp", "fsdp_qlora", "deepspeed_zero2", "deepspeed_zero3",
                      "cpu_two_processes"]
LAUNCH_TIMEOUT_S = 300  # a hung gloo rank must fail the test, not stall CI
STEPS = 3


# ---------------------------------------------------------------- the accelerate config files

@pytest.mark.parametrize("name", ACCELERATE_CONFIGS)
def test_accelerate_config_loads_with_accelerate(name: str) -> None:
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file

    path = ACCELERATE_DIR / f"{name}.yaml"
    config = load_config_from_file(str(path))  # raises on unknown keys, as `accelerate launch` does
    assert isinstance(config, ClusterConfig)
    # tunebook decides the precision (train.precision); a value here would silently override it.
    assert config.mixed_precision == "no"
    # The header says when to pick the file and how to launch it.
    text = path.read_text()
    assert text.startswith("#")
    header = text.split("\ncompute_environment:")[0]
    assert f"accelerate launch --config_file configs/accelerate/{name}.yaml" in header
    assert "-m tunebook train configs/" in header


def test_accelerate_config_files_are_the_expected_ones() -> None:
    assert sorted(p.stem for p in ACCELERATE_DIR.glob("*.yaml")) == sorted(ACCELERATE_CONFIGS)


def test_fsdp_qlora_settings() -> None:
    raw = yaml.safe_load((ACCELERATE_DIR / "fsdp_qlora.yaml").read_text())
    assert raw["distributed_type"] == "FSDP"
    fsdp = raw["fsdp_config"]
    assert fsdp["fsdp_use_orig_params"] is False
    assert fsdp["fsdp_cpu_ram_efficient_loading"] is True
    assert fsdp["fsdp_sync_module_states"] is True  # accelerate refuses efficient loading without it
    assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert fsdp["fsdp_state_dict_type"] == "SHARDED_STATE_DICT"
    # tunebook checkpoints the model itself (train.gradient_checkpointing); both at once is an error.
    assert fsdp["fsdp_activation_checkpointing"] is False


@pytest.mark.parametrize("name, stage", [("deepspeed_zero2", 2), ("deepspeed_zero3", 3)])
def test_deepspeed_leaves_batch_settings_to_the_trainer(name: str, stage: int) -> None:
    raw = yaml.safe_load((ACCELERATE_DIR / f"{name}.yaml").read_text())
    ds = raw["deepspeed_config"]
    assert ds["zero_stage"] == stage
    # Unset means "auto": the Trainer fills them from the run config. A value that differs from
    # train.gradient_accumulation_steps would stop the run with a mismatch error.
    assert "gradient_accumulation_steps" not in ds and "gradient_clipping" not in ds
    if stage == 3:  # the final adapter save gathers 16-bit weights
        assert ds["zero3_save_16bit_model"] is True


# ---------------------------------------------------------------- two processes vs one

@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory) -> Path:
    rows = [{"instruction": f"What is {i} plus {i}?", "input": "" if i % 3 else f"Show work for {i}.",
             "output": f"{i} plus {i} is {2 * i}."} for i in range(40)]
    return write_rows(tmp_path_factory.mktemp("data") / "train.jsonl", rows)


def make_config(model_dir: Path, data: Path, output_dir: Path, per_device_batch_size: int) -> RunConfig:
    return apply_overrides(RunConfig(), {
        "model.name": str(model_dir),
        "data.path": str(data),
        "data.seed": 0,
        "lora.r": 4,
        "lora.alpha": 8,
        "lora.dropout": 0.0,  # dropout masks would differ between one and two processes
        "train.output_dir": str(output_dir),
        "train.max_steps": STEPS,
        "train.per_device_batch_size": per_device_batch_size,
        "train.learning_rate": 1e-3,
        "train.warmup_ratio": 0.0,
        "train.precision": "fp32",
        # Plain shuffling makes "same global batches" hold by construction (length grouping
        # matched too when measured, but depends on how the Trainer shards its sampler).
        "train.group_by_length": False,
        "train.logging_steps": 1,
        "train.eval_steps": STEPS,
        "train.save_steps": STEPS,
        "train.eval_loss_examples": 4,
        "train.seed": 7,
    })


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accelerate_launch(args: list[str], cwd: Path, timeout: float = LAUNCH_TIMEOUT_S) -> tuple[int, str]:
    """Run `accelerate launch ARGS`; on timeout kill the launcher *and* its ranks, then fail."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", *args]
    # A new session: the ranks are grandchildren, so a timeout must kill the whole process group.
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"accelerate launch did not finish in {timeout} s; output:\n{output[-4000:]}")
    return process.returncode, output


@pytest.fixture(scope="module")
def two_process_run(tiny_model_dir, tiny_dataset, tmp_path_factory):
    """`accelerate launch --config_file configs/accelerate/cpu_two_processes.yaml -m tunebook train`."""
    tmp = tmp_path_factory.mktemp("ddp")
    config = make_config(tiny_model_dir, tiny_dataset, tmp / "run", per_device_batch_size=2)
    save_config(config, tmp / "run.yaml")
    rc, output = accelerate_launch(
        ["--config_file", str(ACCELERATE_DIR / "cpu_two_processes.yaml"), "--main_process_port", str(free_port()),
         "-m", "tunebook", "train", str(tmp / "run.yaml")], cwd=tmp)
    assert rc == 0, output[-4000:]
    return Path(config.train.output_dir), output


@pytest.fixture(scope="module")
def one_process_metrics(tiny_model_dir, tiny_dataset, tmp_path_factory) -> dict:
    """The same run in this process: one rank, 4 examples per step (the same global batch)."""
    config = make_config(tiny_model_dir, tiny_dataset, tmp_path_factory.mktemp("single") / "run",
                         per_device_batch_size=4)
    return run_training(config).metrics


def test_two_processes_finish_and_save_one_adapter(two_process_run) -> None:
    run_dir, output = two_process_run
    adapters = sorted(p.relative_to(run_dir) for p in run_dir.rglob("adapter_model.safetensors"))
    # One final adapter (plus the Trainer's own checkpoint); no staging or backup folder left over.
    assert adapters == [Path("adapter/adapter_model.safetensors"),
                        Path(f"checkpoints/checkpoint-{STEPS}/adapter_model.safetensors")]
    assert not (run_dir / "adapter.tmp").exists() and not (run_dir / "adapter.old").exists()
    with safe_open(str(run_dir / "adapter" / "adapter_model.safetensors"), framework="pt") as f:
        assert len(list(f.keys())) == 28  # 7 projections x 2 layers x (A, B)
    for name in ("config.yaml", "environment.json", "metrics.json", "loss_curve.png", "length_histogram.png"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "length_histogram.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert load_config(run_dir / "config.yaml").train.per_device_batch_size == 2


def test_two_processes_print_once(two_process_run) -> None:
    _, output = two_process_run
    # The main process prints; the other rank stays quiet (tunebook.train.say, Trainer logging).
    assert output.count("[tunebook] adapter saved to") == 1
    assert output.count("[tunebook] data: ") == 1
    assert output.count("[tunebook] LoRA r=4") == 1
    assert output.count("[tunebook] gradient checkpointing off: ") == 1
    # Both ranks weigh the same figure: the least free memory of the two (one all_reduce), RAM shared.
    assert "shared by 2 processes; the least of 2 ranks" in output
    assert output.count(": loss ") == STEPS  # one train-loss line per logging step, not one per rank
    assert output.count(": eval loss ") == 1


def test_two_processes_metrics(two_process_run) -> None:
    run_dir, _ = two_process_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    assert metrics["global_step"] == STEPS
    assert [e["step"] for e in metrics["train_loss"]] == list(range(1, STEPS + 1))
    assert metrics["trained_tokens"] > 0


def test_two_processes_match_one_process_with_the_same_global_batch(two_process_run, one_process_metrics) -> None:
    run_dir, _ = two_process_run
    two = json.loads((run_dir / "metrics.json").read_text())
    one = one_process_metrics
    assert one["world_size"] == 1
    two_losses = [e["loss"] for e in two["train_loss"]]
    one_losses = [e["loss"] for e in one["train_loss"]]
    # Step 1 compares the forward passes (same weights, same examples); steps 2-3 also compare the
    # averaged gradients and the optimizer updates they led to.
    assert two_losses == pytest.approx(one_losses, rel=1e-4)
    assert two["final_eval_loss"] == pytest.approx(one["final_eval_loss"], rel=1e-4)
    # Token counts are summed over the ranks: the same examples were trained on.
    assert two["trained_tokens"] == one["trained_tokens"]
    assert two["input_tokens"] == one["input_tokens"]

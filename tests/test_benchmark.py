"""The training benchmark runs end to end at its smallest setting and writes a complete JSON.

No timing thresholds: the numbers depend on the machine (and on its neighbours). What is checked:
the harness works, reports every field, and each derived figure and ratio follows its definition
from the measured ones. The real run is ``make bench``.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO_ROOT

VARIANT_FIELDS = [
    "precision", "steps", "timing", "seconds_per_step", "trained_tokens_per_second", "trained_tokens",
    "padded_tokens", "padding_fraction", "final_train_loss", "eval_loss", "peak_memory_mb",
    "baseline_memory_mb", "peak_memory_growth_mb", "estimate_mb", "estimate_relative_error",
    "flops_per_step", "floor_seconds_per_step", "floor_fraction_achieved", "command",
]


@pytest.mark.integration
def test_benchmark_smallest_setting(tmp_path):
    out, runs = tmp_path / "results", tmp_path / "runs"
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "bench_training.py"), "--steps", "1", "--batch-size", "1",
         "--examples", "8", "--eval-examples", "1", "--variants", "tutorial,tunebook", "--profile-steps", "1",
         "--out", str(out), "--runs-dir", str(runs)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (path,) = out.glob("*.json")
    result = json.loads(path.read_text())

    assert result["settings"]["steps"] == 1 and result["settings"]["variants"] == ["tutorial", "tunebook"]
    assert {"fp32"} <= set(result["gemm_gflops"]) and all(
        rate["block"] > 0 and rate["lm_head"] > 0 for rate in result["gemm_gflops"].values())
    tutorial, tunebook = result["variants"]["tutorial"], result["variants"]["tunebook"]
    for row in (tutorial, tunebook):
        missing = [f for f in VARIANT_FIELDS if f not in row]
        assert not missing, missing
        assert row["steps"] == 1 and row["trained_tokens"] > 0 and row["peak_memory_mb"] > 0
        assert row["floor_seconds_per_step"] > 0 and row["flops_per_step"]["total"] > 0
    # The tutorial variant really pads to 512 in fp32; the default pads dynamically.
    assert tutorial["precision"] == "fp32" and tutorial["padded_tokens"] == 512
    assert tunebook["padded_tokens"] < 512
    # Figures against their definitions: one step is timed end to end (trainer.train() minus evaluation).
    for row in (tutorial, tunebook):
        assert row["trained_tokens_per_second"] == pytest.approx(row["trained_tokens"] / row["timed_seconds"])
        assert row["seconds_per_step"] == pytest.approx(row["timed_seconds"] / row["timed_steps"])
        assert row["padding_fraction"] == pytest.approx(1 - row["input_tokens"] / row["padded_tokens"])
        assert row["peak_memory_growth_mb"] == pytest.approx(row["peak_memory_mb"] - row["baseline_memory_mb"])
        assert row["floor_fraction_achieved"] == pytest.approx(row["floor_seconds_per_step"] / row["seconds_per_step"])
    # The ratios divide the tunebook variant's figures by the tutorial's (not a variant by itself).
    ratio = tunebook["vs_tutorial"]
    assert ratio["trained_tokens_per_second"] == pytest.approx(
        tunebook["trained_tokens_per_second"] / tutorial["trained_tokens_per_second"])
    assert ratio["seconds_per_step"] == pytest.approx(tunebook["seconds_per_step"] / tutorial["seconds_per_step"])
    assert ratio["peak_memory"] == pytest.approx(tunebook["peak_memory_mb"] / tutorial["peak_memory_mb"])
    assert [t["status"] for t in result["targets"]][2] == "SKIP"  # no qlora-4bit variant asked for
    assert all(t["status"] in {"PASS", "MISS", "N/A", "SKIP"} for t in result["targets"])
    assert "tok/s" in proc.stdout and str(path) in proc.stdout
    # The step's time breakdown: every second of the profiled step in one category, GEMMs among them.
    profile = result["step_profile"]
    assert profile["batch"][0] == 1 and profile["seconds_per_step"] > 0 and not profile["compiled"]
    assert profile["breakdown_seconds"]["GEMM"] > 0 and profile["breakdown_seconds"]["optimizer"] > 0
    assert "operator time by category" in proc.stdout and "GEMM" in proc.stdout


def test_pad_to_length_shorter_than_an_example_fails_before_the_model_loads(tmp_path):
    """train.pad_to_length (the tutorial variant's fixed padding) must fit every example."""
    from tunebook.config import apply_overrides, load_config
    from tunebook.train import run_training

    config = apply_overrides(load_config(REPO_ROOT / "configs/smollm2-135m-instruct/lora.yaml"),
                             {"train.pad_to_length": 16, "data.max_train_examples": 4,
                              "data.path": str(REPO_ROOT / "data" / "extraction"),
                              "train.output_dir": str(tmp_path / "run")})
    with pytest.raises(ValueError, match="pad_to_length=16 is shorter than the longest example"):
        run_training(config)

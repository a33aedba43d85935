"""Golden values: a seeded tiny run's first losses, pinned (as torchtune pins its recipes').

Masking, collation, the chat template's end token, the loss on trained positions, the LoRA init and
the optimizer all shape these numbers. A change in any of them that moves a loss fails here, even
when every other test still passes; if the change is intended, the new values go in with the
commit that explains it. (Pinned for the CPU build of torch in requirements.txt; other builds and
GPUs may differ in the last digits.)
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import write_rows

from tunebook.config import RunConfig, apply_overrides
from tunebook.train import run_training

GOLDEN_LOSSES = [10.822, 10.7249, 10.5563, 10.4743]  # steps 1-4
GOLDEN_EVAL_LOSS = 10.487  # after step 4
GOLDEN_TRAINED_TOKENS = 186  # answer tokens seen in steps 1-4 (labels != -100)


def test_seeded_tiny_run_matches_its_golden_losses(tiny_model_dir: Path, tmp_path: Path) -> None:
    rows = [{"instruction": f"What is {i} plus {i}?", "input": "" if i % 3 else f"Show the work for {i}.",
             "output": f"{i} plus {i} is {2 * i}."} for i in range(40)]
    config = apply_overrides(RunConfig(), {
        "model.name": str(tiny_model_dir), "data.path": str(write_rows(tmp_path / "data" / "train.jsonl", rows)),
        "lora.r": 4, "lora.alpha": 8, "lora.dropout": 0.0, "train.output_dir": str(tmp_path / "run"),
        "train.max_steps": 4, "train.per_device_batch_size": 4, "train.learning_rate": 1e-2,
        "train.warmup_ratio": 0.0, "train.precision": "fp32", "train.logging_steps": 1, "train.eval_steps": 4,
        "train.save_steps": 4, "train.seed": 3, "data.seed": 0})
    metrics = run_training(config).metrics
    assert [round(e["loss"], 4) for e in metrics["train_loss"]] == pytest.approx(GOLDEN_LOSSES, abs=2e-4)
    assert metrics["final_eval_loss"] == pytest.approx(GOLDEN_EVAL_LOSS, abs=2e-4)
    assert metrics["trained_tokens"] == GOLDEN_TRAINED_TOKENS

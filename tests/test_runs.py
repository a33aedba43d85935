"""Run-folder rules (tunebook.runs) on folders built by hand: no training needed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tunebook.config import RunConfig, apply_overrides, config_to_dict, save_config
from tunebook.errors import RunFolderError
from tunebook.runs import (
    IDENTITY_KEYS,
    RUN_FILES,
    check_same_model,
    identity_differences,
    is_finished,
    last_complete_checkpoint,
    run_contents,
    saved_config,
    start_run,
)

# A value different from the default for each identity key.
CHANGED = {"model.name": "other-model", "model.task": "sequence-classification", "model.quantization": "4bit",
           "lora.r": 4, "lora.alpha": 8.0, "lora.target_modules": ["q_proj"], "lora.bias": "all",
           "data.recipe": "classification", "data.labels": ["a", "b"], "data.instruction": "Do it.",
           "data.system_prompt": "Be brief."}
# Settings that do not change which model an adapter belongs to.
NOT_IDENTITY = {"train.learning_rate": 1e-3, "train.max_steps": 3, "data.path": "elsewhere", "eval.batch_size": 2,
                "data.max_length": 64, "train.output_dir": "runs/other", "data.seed": 9}


def config_with(**values) -> RunConfig:
    return apply_overrides(RunConfig(), {k.replace("__", "."): v for k, v in values.items()})


def test_identity_keys_are_the_documented_ones() -> None:
    assert sorted(CHANGED) == sorted(IDENTITY_KEYS)
    sections = config_to_dict(RunConfig())
    for key in IDENTITY_KEYS:
        section, name = key.split(".")
        assert name in sections[section], key


@pytest.mark.parametrize("key", IDENTITY_KEYS)
def test_each_identity_key_is_compared(key: str) -> None:
    saved = RunConfig()
    values = {key: CHANGED[key]}
    if key in ("model.task", "data.recipe"):  # classification needs both
        values = {"model.task": "sequence-classification", "data.recipe": "classification"}
    now = apply_overrides(saved, values)
    changes = identity_differences(saved, now)
    section, name = key.split(".")
    old, new = getattr(getattr(saved, section), name), getattr(getattr(now, section), name)
    assert f"{key}: {old!r} -> {new!r}" in changes
    assert len(changes) == len(values)


def test_other_settings_are_not_identity() -> None:
    assert identity_differences(RunConfig(), apply_overrides(RunConfig(), NOT_IDENTITY)) == []


def test_check_same_model(tmp_path: Path) -> None:
    check_same_model(tmp_path, RunConfig(), "resume")  # no config.yaml: nothing to compare with
    save_config(RunConfig(), tmp_path / "config.yaml")
    assert saved_config(tmp_path) == RunConfig()
    check_same_model(tmp_path, apply_overrides(RunConfig(), NOT_IDENTITY), "resume")
    with pytest.raises(RunFolderError) as info:
        check_same_model(tmp_path, config_with(lora__r=4, lora__bias="all"), "evaluate x")
    message = str(info.value)
    assert message.startswith(f"Cannot evaluate x: the config differs from the one {tmp_path} was trained with")
    assert "lora.r: 16 -> 4; lora.bias: 'none' -> 'all'" in message


def test_run_contents_lists_run_files_only(tmp_path: Path) -> None:
    assert run_contents(tmp_path) == [] and run_contents(tmp_path / "missing") == []
    for name in ("metrics.json", "prepared", "notes.txt", "config.yaml"):
        (tmp_path / name).mkdir() if "." not in name else (tmp_path / name).write_text("x")
    (tmp_path / "eval").mkdir()
    assert run_contents(tmp_path) == ["config.yaml", "metrics.json", "eval"]  # RUN_FILES order
    assert set(RUN_FILES) >= {"config.yaml", "adapter", "checkpoints", "metrics.json", "eval"}


def test_is_finished_needs_adapter_and_metrics(tmp_path: Path) -> None:
    assert not is_finished(tmp_path)
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    assert not is_finished(tmp_path)
    (tmp_path / "metrics.json").write_text("{}")
    assert is_finished(tmp_path)
    (tmp_path / "adapter" / "adapter_config.json").unlink()
    assert not is_finished(tmp_path)


def make_checkpoint(folder: Path, step: int, complete: bool = True) -> Path:
    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "adapter_model.safetensors").write_text("weights")
    if complete:
        (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    else:
        (path / "trainer_state.json").write_text('{"global_st')  # cut short by a kill
    return path


def test_last_complete_checkpoint_is_numeric_and_skips_broken_ones(tmp_path: Path) -> None:
    for step in (2, 9, 10):
        make_checkpoint(tmp_path, step)
    broken = make_checkpoint(tmp_path, 12, complete=False)
    missing_state = tmp_path / "checkpoint-11"
    missing_state.mkdir()
    (tmp_path / "checkpoint-final").mkdir()  # not a step: ignored
    (tmp_path / "checkpoint-99").write_text("a file, not a folder")
    assert last_complete_checkpoint(tmp_path, remove_broken=False) == tmp_path / "checkpoint-10"
    assert broken.is_dir() and missing_state.is_dir()  # kept when asked to
    assert last_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-10"  # 10 > 9: numbers, not text
    assert not broken.exists() and not missing_state.exists()
    assert (tmp_path / "checkpoint-9").is_dir() and (tmp_path / "checkpoint-final").is_dir()


def test_checkpoint_choice_is_said(tmp_path: Path, capsys) -> None:
    make_checkpoint(tmp_path, 3)
    make_checkpoint(tmp_path, 5, complete=False)
    last_complete_checkpoint(tmp_path)
    out = capsys.readouterr().out
    assert ("--resume: removing checkpoint-5: its trainer_state.json is missing or cut short (the run stopped while "
            "saving it)") in out
    assert "--resume: continuing from checkpoint-3" in out


def test_no_complete_checkpoint(tmp_path: Path) -> None:
    make_checkpoint(tmp_path, 2, complete=False)
    with pytest.raises(RunFolderError) as info:
        last_complete_checkpoint(tmp_path)
    assert str(info.value) == (f"--resume: no complete checkpoint in {tmp_path}; the run stopped before its first "
                               "checkpoint (train.save_steps). Start it again with --overwrite.")
    with pytest.raises(RunFolderError, match="no complete checkpoint"):
        last_complete_checkpoint(tmp_path / "none")


def run_config(tmp_path: Path, **values) -> RunConfig:
    return config_with(train__output_dir=str(tmp_path / "run"), **values)


def test_start_run_claims_an_empty_folder(tmp_path: Path) -> None:
    config = run_config(tmp_path)
    assert start_run(config) is None
    assert saved_config(tmp_path / "run") == config


def test_start_run_refuses_a_folder_holding_a_run(tmp_path: Path) -> None:
    config = run_config(tmp_path)
    start_run(config)
    (tmp_path / "run" / "metrics.json").write_text("{}")
    with pytest.raises(RunFolderError) as info:
        start_run(config)
    message = str(info.value)
    assert "already holds a run (config.yaml, metrics.json)" in message
    assert "--resume" in message and "--overwrite (removes config.yaml, metrics.json)" in message


def test_overwrite_removes_run_files_and_keeps_the_rest(tmp_path: Path) -> None:
    config = run_config(tmp_path)
    run = tmp_path / "run"
    start_run(config)
    make_checkpoint(run / "checkpoints", 2)
    (run / "metrics.json").write_text("{}")
    (run / "prepared").mkdir()
    (run / "notes.txt").write_text("mine")
    new = apply_overrides(config, {"lora.r": 4})
    assert start_run(new, overwrite=True) is None
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "notes.txt", "prepared"]
    assert saved_config(run) == new


def test_resume_rules(tmp_path: Path) -> None:
    config = run_config(tmp_path)
    run = tmp_path / "run"
    with pytest.raises(RunFolderError, match="contradict each other"):
        start_run(config, resume=True, overwrite=True)
    with pytest.raises(RunFolderError, match=r"--resume: no run in .* \(no config.yaml\)"):
        start_run(config, resume=True)
    start_run(config)
    make_checkpoint(run / "checkpoints", 2)
    make_checkpoint(run / "checkpoints", 4)
    assert start_run(config, resume=True) == run / "checkpoints" / "checkpoint-4"
    with pytest.raises(RunFolderError, match="Cannot resume: .*lora.r: 16 -> 4"):
        start_run(apply_overrides(config, {"lora.r": 4}), resume=True)
    # Other ranks under accelerate only find the checkpoint; they never write or check.
    other_rank = apply_overrides(config, {"lora.r": 4})
    assert start_run(other_rank, resume=True, main_process=False) == run / "checkpoints" / "checkpoint-4"
    assert start_run(other_rank, main_process=False) is None
    assert saved_config(run) == config
    (run / "adapter").mkdir()
    (run / "adapter" / "adapter_config.json").write_text("{}")
    (run / "metrics.json").write_text("{}")
    with pytest.raises(RunFolderError) as info:
        start_run(config, resume=True)
    assert str(info.value) == (f"--resume: the run in {run} is finished (adapter and metrics.json saved). Evaluate "
                               "it, or train again with --overwrite or into a new train.output_dir.")


def test_unwritable_run_folder_is_explained(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(RunFolderError, match="Cannot write the run folder"):
        start_run(config_with(train__output_dir=str(blocker / "run")))


# ---------------------------------------------------------------- saving under FSDP / DeepSpeed (stand-in trainers)


class StandInTrainer:
    """What save_sharded_adapter and save_run use of a Trainer; save_model writes what peft would."""

    def __init__(self, fsdp: bool = False, deepspeed: bool = False, rank0: bool = True):
        from types import SimpleNamespace

        self.is_fsdp_enabled, self.is_deepspeed_enabled, self.rank0 = fsdp, deepspeed, rank0
        self.state_dict_types: list[str] = []
        plugin = SimpleNamespace(set_state_dict_type=self.state_dict_types.append)
        self.accelerator = SimpleNamespace(state=SimpleNamespace(fsdp_plugin=plugin))
        self.saved_to: list[str] = []
        self.state = SimpleNamespace(log_history=[{"loss": 2.0, "step": 1}])
        self.model = SimpleNamespace(save_pretrained=self._save_pretrained)

    def _save_pretrained(self, folder, safe_serialization=True):
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "adapter_model.safetensors").write_text("unsharded weights")

    def save_model(self, folder: str) -> None:
        self.saved_to.append(folder)
        Path(folder).mkdir(parents=True, exist_ok=True)
        if self.rank0:
            for name in ("adapter_model.safetensors", "adapter_config.json", "training_args.bin"):
                (Path(folder) / name).write_text(name)

    def is_world_process_zero(self) -> bool:
        return self.rank0


@pytest.mark.parametrize("fsdp", [True, False])
def test_sharded_adapter_is_gathered_and_moved_into_place(tmp_path: Path, fsdp: bool) -> None:
    from tunebook.runs import save_sharded_adapter

    trainer = StandInTrainer(fsdp=fsdp, deepspeed=not fsdp)
    save_sharded_adapter(trainer, tmp_path / "adapter")
    assert trainer.state_dict_types == (["FULL_STATE_DICT"] if fsdp else [])
    assert trainer.saved_to == [str(tmp_path / ".adapter.gather")]
    saved = sorted(p.name for p in (tmp_path / "adapter").iterdir())
    assert saved == ["adapter_config.json", "adapter_model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]  # the gathering folder is gone


def test_sharded_adapter_on_another_rank_writes_nothing(tmp_path: Path) -> None:
    from tunebook.runs import save_sharded_adapter

    trainer = StandInTrainer(fsdp=True, rank0=False)
    save_sharded_adapter(trainer, tmp_path / "adapter")
    assert trainer.saved_to == [str(tmp_path / ".adapter.gather")]  # it takes part in gathering
    assert not (tmp_path / "adapter").exists()


@pytest.mark.parametrize("fsdp, deepspeed, rank0", [(False, False, True), (True, False, True), (False, True, True),
                                                    (True, False, False), (False, False, False)])
def test_save_run_saves_the_adapter_the_right_way(tmp_path: Path, monkeypatch, fsdp, deepspeed, rank0) -> None:
    from tunebook import train

    config = apply_overrides(RunConfig(), {"train.output_dir": str(tmp_path / "run")})
    (tmp_path / "run").mkdir()  # start_run made it
    tokenizer_saved, sharded_calls = [], []
    monkeypatch.setattr(train, "save_sharded_adapter", lambda trainer, folder: sharded_calls.append(folder))
    tokenizer = type("Tok", (), {"save_pretrained": lambda self, folder: tokenizer_saved.append(Path(folder))})()
    metrics = {"trained_tokens": 10, "trained_tokens_per_second": 5.0, "input_tokens_per_second": 9.0,
               "peak_memory_mb": 100.0, "final_train_loss": 2.0}
    adapter = train.save_run(StandInTrainer(fsdp, deepspeed, rank0), tokenizer, config, metrics)
    run = tmp_path / "run"
    assert adapter == run / "adapter"
    assert sharded_calls == ([run / "adapter"] if fsdp or deepspeed else [])
    assert (run / "adapter" / "adapter_model.safetensors").is_file() is (rank0 and not (fsdp or deepspeed))
    assert tokenizer_saved == ([run / "adapter"] if rank0 else [])
    assert (run / "metrics.json").is_file() is rank0 and (run / "environment.json").is_file() is rank0
    if rank0:
        assert json.loads((run / "metrics.json").read_text()) == metrics
        assert (run / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"


def test_save_run_reports_input_tokens_when_nothing_is_token_trained(tmp_path: Path, capsys) -> None:
    from tunebook import train

    config = apply_overrides(RunConfig(), {"train.output_dir": str(tmp_path / "run")})
    (tmp_path / "run").mkdir()
    tokenizer = type("Tok", (), {"save_pretrained": lambda self, folder: None})()
    metrics = {"trained_tokens": 0, "trained_tokens_per_second": 0.0, "input_tokens_per_second": 321.4,
               "peak_memory_mb": 99.6, "final_train_loss": 1.23456}
    train.save_run(StandInTrainer(), tokenizer, config, metrics)
    assert (f"adapter saved to {tmp_path / 'run' / 'adapter'}; 321 input tokens/s, peak memory 100 MB, final train "
            "loss 1.2346") in capsys.readouterr().out


def test_atomic_directory_keeps_the_copy_of_a_process_that_won_the_race(tmp_path: Path, monkeypatch) -> None:
    """replace=False (the model cache): another process may create `target` after the exists()
    check and before the rename; the rename then fails and that process's complete copy stays."""
    from tunebook import files

    target = tmp_path / "cache" / "model"
    real_replace = os.replace

    def other_process_finishes_first(src, dst):
        Path(dst).mkdir(parents=True)
        (Path(dst) / "weights").write_text("theirs")
        real_replace(src, dst)  # what os.replace does to a non-empty folder: OSError

    monkeypatch.setattr(files.os, "replace", other_process_finishes_first)
    with files.atomic_directory(target, replace=False) as staging:
        (staging / "weights").write_text("ours")
    assert (target / "weights").read_text() == "theirs"
    assert [p.name for p in target.parent.iterdir()] == ["model"]  # no staging folder left behind
    # replace=True (a run's saves) puts the new copy in place of the existing one.
    monkeypatch.setattr(files.os, "replace", real_replace)
    with files.atomic_directory(target) as staging:
        (staging / "weights").write_text("new")
    assert (target / "weights").read_text() == "new"

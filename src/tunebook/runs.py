"""Run folders: what a run writes, and the rule that no run silently replaces another.

A run folder (``train.output_dir``) holds::

    config.yaml         the resolved config, written when training starts: the run's identity,
                        which --resume and `evaluate` compare against
    adapter/            adapter weights (safetensors) + adapter_config.json, written at the end
    checkpoints/        Trainer checkpoints for --resume
    metrics.json        losses per logging step, runtime, tokens/s, peak memory
    environment.json    versions and hardware decisions
    loss_curve.png, length_histogram.png
    eval/               written by `evaluate`; prepared/ by `prepare`

Starting a run where another one lives stops with the three ways forward: ``--resume`` it,
``--overwrite`` it (which lists what it removes), or pick a new ``train.output_dir``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

import torch
from transformers import Trainer

from .config import RunConfig, config_to_dict, load_config, save_config
from .errors import RunFolderError
from .files import atomic_directory, unwritable
from .log import get_logger

logger = get_logger()

# What a training run (and the evaluation of its adapter) leaves in its folder; prepared/ is derived
# from the data alone and is kept.
RUN_FILES = ("config.yaml", "adapter", "checkpoints", "metrics.json", "environment.json", "loss_curve.png",
             "length_histogram.png", "eval", "export")
# Settings that define the model an adapter belongs to: resuming or evaluating with other values
# would load weights of the wrong shape, or score a model with prompts and labels it never saw.
IDENTITY_KEYS = ("model.name", "model.task", "model.quantization", "lora.r", "lora.alpha", "lora.target_modules",
                 "lora.bias", "data.recipe", "data.labels", "data.instruction", "data.system_prompt")


def run_contents(run_dir: Path) -> list[str]:
    """The run files present in `run_dir` (empty: no run lives there)."""
    return [name for name in RUN_FILES if (run_dir / name).exists()]


def saved_config(run_dir: Path) -> RunConfig | None:
    """The config a run was trained with (its config.yaml), or None."""
    path = run_dir / "config.yaml"
    return load_config(path) if path.is_file() else None


def identity_differences(saved: RunConfig, config: RunConfig) -> list[str]:
    """``key: saved -> now`` for every identity key (:data:`IDENTITY_KEYS`) that differs."""
    old, new = config_to_dict(saved), config_to_dict(config)
    changes = []
    for key in IDENTITY_KEYS:
        section, name = key.split(".")
        if old[section][name] != new[section][name]:
            changes.append(f"{key}: {old[section][name]!r} -> {new[section][name]!r}")
    return changes


def check_same_model(run_dir: Path, config: RunConfig, action: str) -> None:
    """Stop when `config` describes another model or adapter than the run in `run_dir` was trained as."""
    saved = saved_config(run_dir)
    if saved is None:
        return
    changes = identity_differences(saved, config)
    if changes:
        raise RunFolderError(
            f"Cannot {action}: the config differs from the one {run_dir} was trained with "
            f"({run_dir / 'config.yaml'}) in {'; '.join(changes)}. Use that run's settings, or train a new run "
            "into another train.output_dir.")


def is_finished(run_dir: Path) -> bool:
    """True when the run saved its final adapter and metrics (it reached train.max_steps)."""
    return (run_dir / "adapter" / "adapter_config.json").is_file() and (run_dir / "metrics.json").is_file()


def last_complete_checkpoint(checkpoints: Path, remove_broken: bool = True, verbose: bool = True) -> Path:
    """The newest ``checkpoint-N`` in `checkpoints` that was saved completely.

    The Trainer writes a checkpoint's files one after another and ``trainer_state.json`` last, so
    a run killed while saving leaves a newest folder without a readable state file; resuming from
    it would fail or load half a state. Such folders are removed (and said so): nothing is lost
    but the steps since the previous checkpoint.
    """
    def step(path: Path) -> int:
        return int(path.name.split("-")[-1])

    candidates = sorted((p for p in checkpoints.glob("checkpoint-*")
                         if p.is_dir() and p.name.split("-")[-1].isdigit()), key=step, reverse=True)
    for candidate in candidates:
        try:
            json.loads((candidate / "trainer_state.json").read_text())
        except (OSError, ValueError):
            # Useless to resume from, and in the way: the Trainer would later write the same step
            # into the folder, on top of the stale half-written files.
            if remove_broken:
                logger.info(f"--resume: removing {candidate.name}: its trainer_state.json is missing or cut "
                            "short (the run stopped while saving it)")
                shutil.rmtree(candidate)
            continue
        if verbose:
            logger.info(f"--resume: continuing from {candidate.name}")
        return candidate
    raise RunFolderError(f"--resume: no complete checkpoint in {checkpoints}; the run stopped before its first "
                         "checkpoint (train.save_steps). Start it again with --overwrite.")


def check_run(config: RunConfig, resume: bool = False, overwrite: bool = False) -> None:
    """Stop (:class:`RunFolderError`) when ``train.output_dir`` cannot take this run; write nothing.

    Called before the data and the model load, so a run that cannot start says so at once, and
    again by :func:`start_run` just before it writes.
    """
    run_dir = Path(config.train.output_dir)
    if resume and overwrite:
        raise RunFolderError("--resume and --overwrite contradict each other: pick one.")
    if run_dir.exists() and not run_dir.is_dir():
        raise RunFolderError(f"train.output_dir '{run_dir}' is a file, not a folder. Set train.output_dir to a "
                             "folder (it is created if missing).")
    if reason := unwritable(run_dir):
        raise RunFolderError(f"Cannot write the run folder {run_dir}: {reason}. Set train.output_dir to a folder "
                             "you can write.")
    present = run_contents(run_dir)
    if resume:
        if "config.yaml" not in present:
            raise RunFolderError(f"--resume: no run in {run_dir} (no config.yaml). Run without --resume to start one.")
        check_same_model(run_dir, config, "resume")
        if is_finished(run_dir):
            raise RunFolderError(f"--resume: the run in {run_dir} is finished (adapter and metrics.json saved). "
                                 "Evaluate it, or train again with --overwrite or into a new train.output_dir.")
        checkpoint = last_complete_checkpoint(run_dir / "checkpoints", remove_broken=False, verbose=False)
        step = json.loads((checkpoint / "trainer_state.json").read_text()).get("global_step", 0)
        if step > config.train.max_steps:
            raise RunFolderError(
                f"--resume: {checkpoint.name} is at step {step}, past train.max_steps={config.train.max_steps}: the "
                f"run would stop at once and save step {step}'s adapter as a {config.train.max_steps}-step run. Set "
                f"train.max_steps to {step} or more (the run's config.yaml has {saved_max_steps(run_dir)}).")
        return
    if present and not overwrite:
        raise RunFolderError(
            f"{run_dir} already holds a run ({', '.join(present)}). Continue it with --resume, replace it with "
            f"--overwrite (removes {', '.join(present)}), or set train.output_dir to a new folder.")


def saved_max_steps(run_dir: Path) -> int | str:
    saved = saved_config(run_dir)
    return saved.train.max_steps if saved else "?"


def start_run(config: RunConfig, resume: bool = False, overwrite: bool = False,
              main_process: bool = True) -> Path | None:
    """Claim ``train.output_dir`` for a run; return the checkpoint to resume from (None: from scratch).

    Stops (:class:`RunFolderError`) instead of replacing another run's work. Under `accelerate
    launch` only the main process checks and writes; the others only find the checkpoint.
    """
    run_dir = Path(config.train.output_dir)
    if not main_process:
        return last_complete_checkpoint(run_dir / "checkpoints", remove_broken=False) if resume else None
    check_run(config, resume, overwrite)
    if resume:
        return last_complete_checkpoint(run_dir / "checkpoints")
    present = run_contents(run_dir)
    for name in present:
        path = run_dir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    if present:
        logger.info(f"--overwrite: removed {', '.join(present)} from {run_dir}")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir / "config.yaml")
    except OSError as exc:
        raise RunFolderError(f"Cannot write the run folder {run_dir}: {exc.strerror}. Check that it is writable "
                             "and the disk has room, or set train.output_dir elsewhere.") from None
    return None


def discard_unstarted_run(run_dir: Path) -> Path | None:
    """After a failure: keep a run that saved a complete checkpoint (returned), else remove what it wrote.

    So a retry after a failure before the first checkpoint finds no run that never was.
    """
    checkpoints = run_dir / "checkpoints"
    with contextlib.suppress(RunFolderError, OSError):
        return last_complete_checkpoint(checkpoints, remove_broken=False, verbose=False)
    for name in ("config.yaml", "length_histogram.png", "checkpoints"):
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists():
            path.unlink()
    with contextlib.suppress(OSError):
        run_dir.rmdir()  # only when empty: the folder may hold the user's own files (prepared/, notes)
    return None


def save_adapter(model: torch.nn.Module, adapter_dir: Path) -> None:
    """Save adapter weights atomically (see `tunebook.files`): a crash keeps the previous adapter."""
    with atomic_directory(adapter_dir) as staging:
        model.save_pretrained(staging, safe_serialization=True)


def save_sharded_adapter(trainer: Trainer, adapter_dir: Path) -> None:
    """Save the adapter under FSDP or DeepSpeed ZeRO. Every rank must call this.

    The adapter weights are sharded over the ranks, so a main-process-only ``save_pretrained``
    would hang (FSDP gathers collectively) or write empty tensors (ZeRO-3). ``Trainer.save_model``
    gathers them on every rank and writes on the main process only. FSDP's SHARDED_STATE_DICT
    (fast checkpoints) makes ``save_model`` skip the weights, so the final save asks for a full one.
    ZeRO-3 needs ``zero3_save_16bit_model: true`` (configs/accelerate/deepspeed_zero3.yaml).
    """
    if trainer.is_fsdp_enabled:
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    staging = adapter_dir.with_name(f".{adapter_dir.name}.gather")  # same path on every rank
    trainer.save_model(str(staging))
    if trainer.is_world_process_zero():
        (staging / "training_args.bin").unlink(missing_ok=True)  # a pickle; config.yaml holds the settings
        with atomic_directory(adapter_dir) as final:
            for item in staging.iterdir():
                os.replace(item, final / item.name)
        shutil.rmtree(staging, ignore_errors=True)

"""Small helpers for the notebooks in ``notebooks/``: setup, smoke mode, display, and running them.

The notebooks hold narrative, calls and plots; anything longer than a few lines lives here (or in
the pipeline modules), so a cell reads like the CLI: load a config, call one function, look at
the result.

- :func:`use_repo_root` makes a notebook work whether Jupyter started it in ``notebooks/`` or the
  repository root, and quiets library chatter (warnings that print file paths, progress bars).
- :func:`notebook_config` loads a run config and, in smoke mode, shrinks every heavy step and
  moves the run folder under ``runs/smoke/``.
- :func:`ensure_adapter` trains a short adapter when a notebook needs one that an earlier notebook
  has not produced yet, so every notebook runs on its own.

Running the notebooks themselves (papermill, kernels, output checks) is contributor tooling and
lives in ``scripts/notebook_tools.py``.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from .log import get_logger

logger = get_logger()

# Smoke mode: every heavy step shrinks so that a notebook runs in about a minute on a CPU.
SMOKE_OVERRIDES: dict[str, Any] = {
    "data.max_train_examples": 32,
    "train.max_steps": 2,
    "train.per_device_batch_size": 2,
    "train.logging_steps": 1,
    "train.eval_steps": 2,
    "train.save_steps": 2,
    "train.eval_loss_examples": 4,
    "eval.max_examples": 4,
    "eval.max_new_tokens": 16,
}
# The instruction-following data (Nimbus N2 support answers) trained with lora.yaml's settings: the
# data has its own instruction column, so the fixed extraction instruction is dropped; a short
# system prompt replaces SmolLM2's default one (shorter prompts train faster).
INSTRUCTIONS_OVERRIDES: dict[str, Any] = {
    "data.path": "data/instructions",
    "data.columns": {},
    "data.instruction": None,
    "data.system_prompt": "You are Nimbus Support, the help desk for the Nimbus N2 weather station.",
}


def find_repo_root(start: str | Path | None = None) -> Path:
    """The nearest folder at or above `start` (default: the working directory) holding pyproject.toml."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "configs").is_dir():
            return folder
    raise FileNotFoundError(f"No pyproject.toml found above {here}: open the notebook inside the tunebook repository.")


def quiet_libraries() -> None:
    """Hide warnings (they print site-packages paths) and progress bars; keep tunebook's own prints."""
    os.environ.setdefault("TQDM_DISABLE", "1")  # read by tqdm when it is first imported
    warnings.filterwarnings("ignore")
    import datasets
    import transformers

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # import-time note about optional kernels
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    try:
        import evaluate

        evaluate.logging.set_verbosity_error()
        evaluate.disable_progress_bar()
    except (ImportError, AttributeError):
        pass


def use_repo_root(quiet: bool = True) -> Path:
    """chdir to the repository root (config paths such as ``data/extraction`` are relative to it)."""
    root = find_repo_root()
    os.chdir(root)
    if quiet:
        quiet_libraries()
    logger.info(f"working directory: the repository root ('{root.name}', where pyproject.toml is)")
    return root


def run_folder(name: str, smoke: bool = False, runs: str = "runs") -> str:
    """``runs/<name>``, or ``runs/smoke/<name>`` in smoke mode (smoke runs never overwrite real ones)."""
    return f"{runs}/smoke/{name}" if smoke else f"{runs}/{name}"


def notebook_config(path: str | Path, smoke: bool = False, overrides: dict[str, Any] | None = None,
                    name: str | None = None):
    """Load a YAML run config, apply `overrides`, and in smoke mode :data:`SMOKE_OVERRIDES` too.

    The run folder becomes ``runs/<name>`` (default: the config's own folder name), or
    ``runs/smoke/<name>`` in smoke mode.
    """
    from .config import apply_overrides, load_config

    config = load_config(path)
    name = name or Path(config.train.output_dir).name
    values = {**(overrides or {}), **(SMOKE_OVERRIDES if smoke else {})}
    values["train.output_dir"] = run_folder(name, smoke)
    return apply_overrides(config, values)


def ensure_adapter(config, fallback_steps: int) -> Path:
    """The adapter of `config`'s run folder; if absent, train a short one (``<run>-short``) and return it.

    A notebook that needs an adapter from an earlier notebook calls this, so it runs on its own.
    """
    from .config import apply_overrides
    from .train import run_training

    adapter = Path(config.train.output_dir) / "adapter"
    if (adapter / "adapter_config.json").is_file():
        logger.info(f"using the adapter trained earlier: {adapter}")
        return adapter
    short = apply_overrides(config, {"train.max_steps": fallback_steps,
                                     "train.output_dir": config.train.output_dir + "-short"})
    adapter = Path(short.train.output_dir) / "adapter"
    if (adapter / "adapter_config.json").is_file():
        logger.info(f"using the short adapter trained earlier: {adapter}")
        return adapter
    logger.info(f"no adapter in {config.train.output_dir}: training a short one ({fallback_steps} steps)")
    run_training(short)
    return adapter


def train_in_subprocess(config) -> dict:
    """Run ``python -m tunebook train`` on `config` in a fresh process and return its metrics.json.

    Why a process per run: on CPU, peak memory is the process's peak resident set size, and in a
    notebook kernel that also counts the models and data the kernel holds from earlier cells.
    Only tunebook's own ``[tunebook]`` lines are shown.
    """
    from .config import save_config

    run_dir = Path(config.train.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, run_dir / "requested_config.yaml")
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONWARNINGS": "ignore"}
    start = time.perf_counter()
    # --overwrite: re-running the notebook cell replaces the run that cell made before.
    command = [sys.executable, "-m", "tunebook", "train", str(run_dir / "requested_config.yaml"), "--overwrite"]
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith("[tunebook]"):
            print(line)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        raise RuntimeError(f"training failed (exit code {proc.returncode}):\n{tail}")
    logger.info(f"finished in {time.perf_counter() - start:.0f} s")
    return json.loads((run_dir / "metrics.json").read_text())


def read_metrics(run_dir: str | Path) -> dict | None:
    """A run's metrics.json, or None when the run has not been done."""
    path = Path(run_dir) / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else None


def mb(num_bytes: float) -> float:
    return num_bytes / 2**20


def folder_size_mb(path: str | Path) -> float:
    """Disk size of a folder (e.g. an adapter vs a merged model)."""
    return mb(sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file()))


def show_image(path: str | Path, width: int | None = None) -> None:
    """Display a PNG written by a run (loss curve, histogram, confusion matrix)."""
    from IPython.display import Image, display

    display(Image(filename=str(path), width=width))


def show_html(html: str) -> None:
    from IPython.display import HTML, display

    display(HTML(html))


def training_comparison(runs: dict[str, dict], footprints: dict[str, int] | None = None):
    """One row per training run (metrics.json): model footprint, peak memory, speed, final losses."""
    import pandas as pd

    rows = {}
    for name, m in runs.items():
        rows[name] = {
            "model footprint (MB)": mb(footprints[name]) if footprints and name in footprints else None,
            "peak memory (MB)": m["peak_memory_mb"],
            "seconds / step": m["seconds_per_step"],
            "trained tokens / s": m["trained_tokens_per_second"],
            "steps": m["global_step"],
            "final train loss": m["final_train_loss"],
            "final eval loss": m["final_eval_loss"],
        }
    frame = pd.DataFrame(rows).T
    return frame.astype(float).round({"model footprint (MB)": 0, "peak memory (MB)": 0, "seconds / step": 2,
                                      "trained tokens / s": 0, "steps": 0, "final train loss": 3,
                                      "final eval loss": 3})

"""Contributor tooling for the notebooks: kernels, papermill execution, checks of executed outputs.

Used by ``scripts/run_notebooks.py`` (``make notebooks``) and ``tests/test_notebooks.py``; not part of
the tunebook package, because it serves the repository, not its users.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

# Absolute paths of this machine in notebook sources or outputs (what committed notebooks must not show).
MACHINE_PATH = re.compile(r"/(root|home|tmp|work|Users)/")


def ensure_kernel(name: str = "python3") -> str:
    """Make sure a Jupyter kernel `name` exists that runs *this* Python; install one if not.

    ipykernel's wheel ships a ``python3`` kernelspec whose command is ``python``, which
    jupyter_client replaces with the running interpreter, so a fresh venv usually has it already.
    A kernelspec of another Python (e.g. a user-wide one) is shadowed by a ``tunebook`` kernel.
    """
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    manager = KernelSpecManager()
    try:
        argv0 = manager.get_kernel_spec(name).argv[0]
    except NoSuchKernel:
        argv0 = None
    this_python = Path(sys.executable).resolve()
    if argv0 is not None and (argv0 in ("python", "python3") or Path(argv0).resolve() == this_python):
        return name
    if argv0 is None and name == "python3":
        subprocess.run([sys.executable, "-m", "ipykernel", "install", "--sys-prefix"], check=True,
                       capture_output=True)
        return name
    subprocess.run([sys.executable, "-m", "ipykernel", "install", "--sys-prefix", "--name", "tunebook",
                    "--display-name", "Python (tunebook)"], check=True, capture_output=True)
    return "tunebook"


def notebook_problems(nb: Any, check_paths: bool = True) -> list[str]:
    """Error outputs, tracebacks and (optionally) machine paths in an executed notebook."""
    problems = []
    for i, cell in enumerate(nb.cells):
        texts = [cell.source]
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                problems.append(f"cell {i}: error output {out.get('ename')}: {out.get('evalue')}")
            texts.append(out.get("text", ""))
            texts += [v for v in out.get("data", {}).values() if isinstance(v, str) and not v.startswith("iVBOR")]
        text = "\n".join(t if isinstance(t, str) else "".join(t) for t in texts)
        if "Traceback (most recent call last)" in text:
            problems.append(f"cell {i}: a traceback is printed")
        if check_paths and (match := MACHINE_PATH.search(text)):
            line = next(ln for ln in text.splitlines() if match.group(0) in ln)
            problems.append(f"cell {i}: machine path in {line.strip()[:120]!r}")
    return problems


def execute_notebook(path: str | Path, output: str | Path, smoke: bool = False, kernel: str = "python3",
                     cell_timeout: int = 7200, threads: int | None = None,
                     parameters: dict[str, Any] | None = None) -> Any:
    """Execute `path` top to bottom with papermill, writing the executed notebook to `output`.

    Runs with the kernel's working directory set to the notebook's folder, as Jupyter does (each
    notebook moves itself to the repository root). Smoke mode passes ``SMOKE=True`` as a papermill
    parameter, `parameters` any others (e.g. another ``DATA`` cell); the notebook file itself is
    never edited. `cell_timeout` is generous because 02's learning-rate sweep trains several
    adapters in one cell (~15 min on a quiet 2-core CPU, twice that on a shared one). `threads`
    sets OMP_NUM_THREADS for the kernel: 1 is much faster for smoke-sized work on a busy shared
    CPU. Returns the executed notebook.
    """
    import papermill

    path = Path(path)
    if threads is not None:  # the kernel (and any training subprocess) inherits it; torch reads it
        os.environ["OMP_NUM_THREADS"] = str(threads)
    values = {**({"SMOKE": True} if smoke else {}), **(parameters or {})}
    return papermill.execute_notebook(
        str(path), str(output), parameters=values or None, kernel_name=kernel,
        cwd=str(path.parent), progress_bar=False, log_output=False, execution_timeout=cell_timeout,
        start_timeout=300,
    )


def relative_papermill_metadata(nb: Any, root: str | Path) -> None:
    """Make papermill's input/output paths in the notebook metadata relative to the repository root."""
    meta = nb.metadata.get("papermill", {})
    for key in ("input_path", "output_path"):
        if meta.get(key):
            try:
                meta[key] = str(Path(meta[key]).resolve().relative_to(Path(root).resolve()))
            except ValueError:
                meta[key] = Path(meta[key]).name


def paired_source(notebook: Path) -> Path:
    """The jupytext percent script that is the source of `notebook` (``00_setup.ipynb`` -> ``00_setup.py``)."""
    return notebook.with_suffix(".py")


def cell_sources(nb: Any) -> list[tuple[str, str]]:
    """(cell type, source) of every cell: what must agree between a notebook and its paired script."""
    return [(cell.cell_type, cell.source.strip()) for cell in nb.cells]


def sync_notebook(notebook: Path) -> bool:
    """Bring `notebook` up to date with its paired script, keeping outputs of unchanged cells.

    The script is the source contributors edit (Jupyter with jupytext edits both). Returns True
    when the notebook changed.
    """
    import jupytext

    script = jupytext.read(paired_source(notebook))
    if notebook.is_file():
        current = jupytext.read(notebook)
        if cell_sources(current) == cell_sources(script):
            return False
        updated = jupytext.combine.combine_inputs_with_outputs(script, current)
    else:
        updated = script
    jupytext.write(updated, notebook)
    return True

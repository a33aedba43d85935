"""Execute the notebooks top to bottom with papermill, in order.

    python scripts/run_notebooks.py                 # all, in place (what is committed; `make notebooks`)
    python scripts/run_notebooks.py 02 03           # only these (a prefix or a file name)
    python scripts/run_notebooks.py --smoke         # smoke mode (SMOKE=True): outputs go to a temp folder
    python scripts/run_notebooks.py --sync          # only bring each .ipynb up to date with its .py

The source of each notebook is its paired jupytext script (``notebooks/NN_name.py``, percent
format): edit that (or open the notebook in Jupyter, where jupytext keeps both in step), and this
script first brings the ``.ipynb`` up to date with it (outputs of unchanged cells are kept).

Full mode writes each executed notebook back over its source, but only when it ran without an
error (it is executed into a temporary file first). Afterwards every notebook is checked for
error outputs, printed tracebacks and machine paths (/home/..., /tmp/...), which committed
notebooks must not contain. Run it from anywhere; the kernel starts in notebooks/ like Jupyter,
and each notebook moves itself to the repository root.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = ROOT / "notebooks"
sys.path.insert(0, str(ROOT / "src"))  # works before `pip install -e .` too

from notebook_tools import (  # noqa: E402
    ensure_kernel,
    execute_notebook,
    notebook_problems,
    relative_papermill_metadata,
    sync_notebook,
)


def select(names: list[str]) -> list[Path]:
    notebooks = sorted(p.with_suffix(".ipynb") for p in NOTEBOOK_DIR.glob("[0-9][0-9]_*.py"))
    if not names:
        return notebooks
    chosen = []
    for name in names:
        stem = Path(name).stem
        matches = [p for p in notebooks if p.stem == stem or p.stem.startswith(stem)]
        if len(matches) != 1:
            raise SystemExit(f"'{name}' matches {len(matches)} notebooks; choose from {[p.stem for p in notebooks]}")
        chosen.append(matches[0])
    return sorted(set(chosen))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="notebooks to run (prefix such as 02, or a file name); default all")
    parser.add_argument("--smoke", action="store_true", help="SMOKE=True; write outputs to a temp folder")
    parser.add_argument("--threads", type=int, help="torch/OpenMP threads of the kernel (default: torch's choice; "
                        "1 is faster on a busy shared CPU)")
    parser.add_argument("--out", help="smoke mode: folder for the executed notebooks (default: a temp folder)")
    parser.add_argument("--sync", action="store_true", help="only update each .ipynb from its .py script")
    args = parser.parse_args(argv)
    for path in select(args.names):
        if sync_notebook(path):
            print(f"{path.relative_to(ROOT)}: updated from {path.with_suffix('.py').name}")
    if args.sync:
        return 0

    os.environ.setdefault("TQDM_DISABLE", "1")  # inherited by the kernel: no progress bars in outputs
    import nbformat

    kernel = ensure_kernel()
    out_dir = Path(args.out or tempfile.mkdtemp(prefix="tunebook-notebooks-")) if args.smoke else None
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
    failed = []
    for path in select(args.names):
        rel = path.relative_to(ROOT)
        print(f"{rel}: running{' (smoke)' if args.smoke else ''} ...", flush=True)
        target = out_dir / path.name if out_dir else path.with_name(f".{path.stem}.executing.ipynb")
        start = time.perf_counter()
        try:
            execute_notebook(path, target, smoke=args.smoke, kernel=kernel, threads=args.threads)
        except Exception as exc:  # papermill raises PapermillExecutionError with the cell's error
            print(f"{rel}: FAILED after {time.perf_counter() - start:.0f} s\n{str(exc)[-3000:]}", flush=True)
            failed.append(str(rel))
            if not args.smoke:
                shutil.move(target, path.with_name(f"{path.stem}.failed.ipynb"))
            continue
        seconds = time.perf_counter() - start
        nb = nbformat.read(target, as_version=4)
        if not args.smoke:
            relative_papermill_metadata(nb, ROOT)
            nb.metadata.setdefault("papermill", {})["output_path"] = str(rel)  # not the temp file
            nbformat.write(nb, path)
            target.unlink()
        problems = notebook_problems(nb, check_paths=not args.smoke)
        for problem in problems:
            print(f"  problem: {problem}")
        if problems:
            failed.append(str(rel))
        print(f"{rel}: {'ok' if not problems else 'PROBLEMS'} in {seconds:.0f} s"
              + (f" -> {target}" if args.smoke else " (written in place)"), flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

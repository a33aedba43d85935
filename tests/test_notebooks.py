"""Every notebook runs top to bottom in smoke mode (papermill parameter SMOKE=True).

The committed notebook is executed as it is, with the parameter injected by papermill (never an
edited copy), into tmp_path. Runs go under runs/smoke/ of the repository, in notebook order, so
04 and 05 reuse the smoke adapters of 02 and 03 when those ran first (and train 2-step ones
themselves otherwise). Slow (about 1-3 minutes per notebook on a CPU): marked `notebook`;
`make test-fast` skips them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "scripts"))  # notebook_tools: contributor tooling, not the package
NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
CELL_TIMEOUT_S = 1800  # per cell; generous for a busy shared CPU (pytest-timeout is not a dependency)


def test_all_seven_notebooks_exist():
    assert [p.stem[:2] for p in NOTEBOOKS] == ["00", "01", "02", "03", "04", "05", "06"]


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_smoke_mode(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    pytest.importorskip("papermill")
    import nbformat

    from notebook_tools import ensure_kernel, execute_notebook, notebook_problems

    source = nbformat.read(path, as_version=4)
    first_code = next(c for c in source.cells if c.cell_type == "code")
    assert "parameters" in first_code.metadata.get("tags", []) and "SMOKE = False" in first_code.source

    # Smoke-sized work on a shared CPU: one thread avoids OpenMP hand-offs (see conftest.py).
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("TQDM_DISABLE", "1")
    executed = execute_notebook(path, tmp_path / path.name, smoke=True, kernel=ensure_kernel(),
                                cell_timeout=CELL_TIMEOUT_S, threads=1)
    problems = notebook_problems(executed, check_paths=False)
    assert not problems, "\n".join(problems)
    assert any(out for c in executed.cells if c.cell_type == "code" for out in c.get("outputs", []))

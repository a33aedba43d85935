"""The course: every notebook runs top to bottom in smoke mode, its .ipynb matches its .py source,
the data cell adapts to another CSV, and JupyterLab serves the notebooks.

The committed notebook is executed as it is, with parameters injected by papermill (never an
edited copy), into tmp_path. Runs go under runs/smoke/ of the repository, in notebook order, so
04 and 05 reuse the smoke adapters of 02 and 03 when those ran first (and train 2-step ones
themselves otherwise). Slow (about 1-3 minutes per notebook on a CPU): marked `notebook`;
`make test-fast` skips them.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "scripts"))  # notebook_tools: contributor tooling, not the package
NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
CELL_TIMEOUT_S = 1800  # per cell; generous for a busy shared CPU (pytest-timeout is not a dependency)
# notebook 01's data cell pointed at a CSV with other column names (data/examples/README.md)
TICKETS = {"path": "data/examples/support_tickets.csv", "recipe": "instruction", "instruction": None,
           "columns": {"instruction": "customer_question", "input": "details", "output": "agent_reply"},
           "system_prompt": "You are Nimbus Support."}


def test_all_seven_notebooks_exist_with_their_sources() -> None:
    assert [p.stem[:2] for p in NOTEBOOKS] == ["00", "01", "02", "03", "04", "05", "06"]
    assert all(p.with_suffix(".py").is_file() for p in NOTEBOOKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_matches_its_script(path: Path) -> None:
    """The .py (jupytext percent) is the source: an .ipynb that differs was edited alone or not synced."""
    import jupytext
    from notebook_tools import cell_sources

    assert cell_sources(jupytext.read(path)) == cell_sources(jupytext.read(path.with_suffix(".py"))), (
        f"{path.name} differs from {path.with_suffix('.py').name}: run `python scripts/run_notebooks.py --sync`")
    assert json.loads(path.read_text())["metadata"]["jupytext"]["formats"] == "ipynb,py:percent"


def _execute(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **parameters):
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
                                cell_timeout=CELL_TIMEOUT_S, threads=1, parameters=parameters)
    problems = notebook_problems(executed, check_paths=False)
    assert not problems, "\n".join(problems)
    assert any(out for c in executed.cells if c.cell_type == "code" for out in c.get("outputs", []))
    return executed


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_smoke_mode(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _execute(path, tmp_path, monkeypatch)


@pytest.mark.notebook
def test_data_notebook_takes_another_csv_in_its_data_cell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Changing 01's data cell is all a learner does to use their own file."""
    executed = _execute(REPO_ROOT / "notebooks" / "01_data_prep.ipynb", tmp_path, monkeypatch, DATA=TICKETS)
    text = "\n".join(out.get("text", "") for c in executed.cells for out in c.get("outputs", []))
    assert "support_tickets.csv" in text and "customer_question" in text
    assert "Nimbus Support" in text  # its prompts, not the extraction data's


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.notebook
def test_jupyterlab_serves_the_notebooks(tmp_path: Path) -> None:
    """`make lab` starts JupyterLab on the notebooks: headless here, asked for them through its REST API."""
    pytest.importorskip("jupyterlab")
    port, token = _free_port(), "tunebook-test"
    # --allow-root: CI containers run as root; JUPYTER_RUNTIME_DIR keeps its connection files in tmp_path.
    command = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root", "--ip=127.0.0.1",
               f"--port={port}", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={REPO_ROOT}"]
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path)}
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        url = f"http://127.0.0.1:{port}/api/contents/notebooks?token={token}"
        for _ in range(120):  # up to a minute for the server to start on a busy CPU
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    listing = json.loads(response.read())
                break
            except OSError:
                if server.poll() is not None:
                    pytest.fail(f"jupyter lab exited: {server.stderr.read()[-2000:]}")
                time.sleep(0.5)
        else:
            pytest.fail("jupyter lab did not answer within a minute")
        names = {item["name"] for item in listing["content"] if item["type"] == "notebook"}
        assert {p.name for p in NOTEBOOKS} <= names
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/lab?token={token}", timeout=10) as response:
            assert response.status == 200 and b"JupyterLab" in response.read()
    finally:
        server.terminate()
        server.wait(timeout=30)

"""Every bad input of tests/bad_inputs.py through the real command line, and docs/bad_inputs.md kept current.

Each case must stop with exit status 2 and one message holding its expected fragments (what, where,
the value, the fix), without a traceback, and without writing, changing or removing a file in a
run folder. Cases that load a model or train use tiny random models: the whole file runs in about
two minutes on one CPU thread. ``TUNEBOOK_UPDATE_TABLE=1`` rewrites the table instead of checking it
(or run ``python tests/bad_inputs.py``).
"""

from __future__ import annotations

import os
import shutil

import pytest
from bad_inputs import CASES, TABLE_PATH, Assets, Outcome, render_table, run_case, workspace

# Cases that still misbehave, with the reason; each is expected to fail until it is fixed.
KNOWN_BAD: dict[str, str] = {
}

OUTCOMES: dict[str, Outcome] = {}


@pytest.fixture(scope="module")
def root():
    path = workspace()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def assets(root) -> Assets:
    (root / "assets").mkdir()
    return Assets(root / "assets")


def test_case_ids_are_unique() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 90


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input(case, assets, root) -> None:
    outcome = OUTCOMES[case.id] = run_case(case, assets, root / "cases" / case.id)
    if case.id in KNOWN_BAD:
        if outcome.verdict != "good":
            pytest.xfail(f"{KNOWN_BAD[case.id]}: {outcome.verdict} {outcome.problems}")
        pytest.fail(f"{case.id} behaves well now: remove it from KNOWN_BAD")
    assert outcome.verdict == "good", f"{outcome.verdict} {outcome.problems} (exit {outcome.status}): {outcome.message}"


def test_table_is_current(assets, root) -> None:
    outcomes = [OUTCOMES.get(c.id) or run_case(c, assets, root / "rerun" / c.id) for c in CASES]
    table = render_table(outcomes)
    if os.environ.get("TUNEBOOK_UPDATE_TABLE"):
        TABLE_PATH.write_text(table)
    assert TABLE_PATH.read_text() == table, "docs/bad_inputs.md is out of date: run `python tests/bad_inputs.py`"

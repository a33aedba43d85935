"""tunebook's own evaluation metrics, in the Hugging Face `evaluate` format.

Why not `evaluate.load("accuracy")`? A bare name makes `evaluate` fetch the metric
script from the Hugging Face Hub, which fails offline (and on locked-down GPU boxes).
The metrics here are ordinary `evaluate.Metric` scripts that live in this package and
are loaded *by file path*, so they keep the `evaluate` API (`add_batch`, `compute`,
distributed gathering) but never touch the network.

Available metrics (one file each in this folder):

- ``classification``  accuracy, macro-F1, per-class F1, confusion matrix for int labels
- ``entity_f1``       micro/per-type F1 for JSON entity extraction from generated text
- ``text_overlap``    normalised exact match, SQuAD-style token F1, ROUGE-L

`entity_f1` also exposes plain helpers (`parse_entities`, `categorize_errors`) that can
be imported directly as `tunebook.metrics.entity_f1` without going through `evaluate`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported lazily below: `import evaluate` pulls in datasets/pyarrow
    import evaluate

METRICS_DIR: Path = Path(__file__).parent

__all__ = ["METRICS_DIR", "available_metrics", "load_metric"]


def available_metrics() -> list[str]:
    """Names accepted by `load_metric`: every metric script in `METRICS_DIR`."""
    return sorted(p.stem for p in METRICS_DIR.glob("*.py") if not p.stem.startswith("_"))


def load_metric(name: str) -> evaluate.EvaluationModule:
    """Load one of tunebook's metrics by name, offline.

    Calls `evaluate.load` with the absolute path of ``METRICS_DIR / f"{name}.py"``;
    `evaluate` copies the script into its module cache and imports it from there, so
    no Hub request is made and `HF_HUB_OFFLINE` can stay however the user set it.

    Raises:
        ValueError: if `name` is not one of `available_metrics()` (this also rejects
            paths such as ``"../x"``, since only known stems are accepted).
    """
    names = available_metrics()
    if name not in names:
        raise ValueError(f"Unknown metric {name!r}; available metrics: {', '.join(names)}")
    import evaluate  # lazy: keeps `import tunebook.metrics` cheap

    return evaluate.load(str(METRICS_DIR / f"{name}.py"))

"""Pictures a user would rather look at than read; each is returned *and* saved as PNG.

matplotlib's non-interactive Agg backend is used when no display is configured, so plots also
work headless (CLI, CI); notebooks show the returned figure inline.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

if matplotlib.get_backend().lower() not in ("module://matplotlib_inline.backend_inline", "nbagg", "widget"):
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig: plt.Figure, path: str | Path | None) -> plt.Figure:
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig


def plot_loss_curve(log_history: list[dict], path: str | Path | None = None, title: str = "Loss") -> plt.Figure:
    """Training and evaluation loss against optimizer step, from a Trainer's log history."""
    train = [(e["step"], e["loss"]) for e in log_history if "loss" in e and "step" in e]
    evals = [(e["step"], e["eval_loss"]) for e in log_history if "eval_loss" in e]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if train:
        ax.plot(*zip(*train), label="train loss", marker=".")
    if evals:
        ax.plot(*zip(*evals), label="eval loss", marker="o")
    ax.set(xlabel="optimizer step", ylabel="cross-entropy loss", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_length_histogram(lengths: list[int] | np.ndarray, max_length: int | None = None,
                          path: str | Path | None = None, title: str = "Tokens per example") -> plt.Figure:
    """Histogram of token lengths with the 95th percentile and the chosen max_length marked."""
    lengths = np.asarray(lengths)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(lengths, bins=40, color="#4c72b0")
    ax.axvline(np.percentile(lengths, 95), color="orange", linestyle="--", label="95th percentile")
    if max_length is not None:
        ax.axvline(max_length, color="red", label=f"max_length={max_length}")
    ax.set(xlabel="tokens", ylabel="examples", title=title)
    ax.legend()
    return _save(fig, path)


def plot_confusion_matrix(matrix: list[list[int]] | np.ndarray, labels: list[str],
                          path: str | Path | None = None, title: str = "Confusion matrix") -> plt.Figure:
    """Rows are true labels, columns predictions; counts written in each cell."""
    matrix = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(1.2 * len(labels) + 2, 1.1 * len(labels) + 1.5))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, str(count), ha="center", va="center",
                color="white" if count > matrix.max() / 2 else "black")
    ax.set(xlabel="predicted", ylabel="true", title=title)
    return _save(fig, path)

"""Pictures a user would rather look at than read; each is returned *and* saved as PNG.

Figures are built with matplotlib's object API (``matplotlib.figure.Figure``), not pyplot: no
backend is chosen and no global figure registry fills up in a long training process, so the same
code works headless (CLI, CI) and in notebooks, which display a returned figure inline.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure


def _save(fig: Figure, path: str | Path | None) -> Figure:
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig


def plot_loss_curve(log_history: list[dict], path: str | Path | None = None, title: str = "Loss") -> Figure:
    """Training and evaluation loss against optimizer step, from a Trainer's log history."""
    train = [(e["step"], e["loss"]) for e in log_history if "loss" in e and "step" in e]
    evals = [(e["step"], e["eval_loss"]) for e in log_history if "eval_loss" in e]
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    if train:
        ax.plot(*zip(*train), label="train loss", marker=".")
    if evals:
        ax.plot(*zip(*evals), label="eval loss", marker="o")
    ax.set(xlabel="optimizer step", ylabel="cross-entropy loss", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_length_histogram(lengths: list[int] | np.ndarray, max_length: int | None = None,
                          path: str | Path | None = None, title: str = "Tokens per example") -> Figure:
    """Histogram of token lengths with the 95th percentile and the chosen max_length marked."""
    lengths = np.asarray(lengths)
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    ax.hist(lengths, bins=40, color="#4c72b0")
    ax.axvline(np.percentile(lengths, 95), color="orange", linestyle="--", label="95th percentile")
    if max_length is not None:
        ax.axvline(max_length, color="red", label=f"max_length={max_length}")
    ax.set(xlabel="tokens", ylabel="examples", title=title)
    ax.legend()
    return _save(fig, path)


def plot_confusion_matrix(matrix: list[list[int]] | np.ndarray, labels: list[str],
                          path: str | Path | None = None, title: str = "Confusion matrix") -> Figure:
    """Rows are true labels, columns predictions; counts written in each cell."""
    matrix = np.asarray(matrix)
    fig = Figure(figsize=(1.2 * len(labels) + 2, 1.1 * len(labels) + 1.5))
    ax = fig.subplots()
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, str(count), ha="center", va="center",
                color="white" if count > matrix.max() / 2 else "black")
    ax.set(xlabel="predicted", ylabel="true", title=title)
    return _save(fig, path)

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


def plot_memory_breakdown(estimates: dict[str, object], path: str | Path | None = None,
                          title: str = "Estimated training memory") -> Figure:
    """One stacked bar per estimate (`tunebook.memory.MemoryEstimate`), one colour per term, in GiB."""
    terms = ["weights", "adapter", "gradients", "optimizer_state", "activations", "logits", "kv_cache", "overhead"]
    values = {name: est.as_dict() for name, est in estimates.items()}
    terms = [t for t in terms if any(v[t] for v in values.values())]
    fig = Figure(figsize=(1.4 * len(estimates) + 3.5, 3.8))
    ax = fig.subplots()
    bottom = np.zeros(len(estimates))
    for term in terms:
        heights = np.array([values[name][term] for name in estimates])
        ax.bar(list(estimates), heights, bottom=bottom, label=term.replace("_", " "))
        bottom += heights
    for x, total in enumerate(bottom):
        ax.text(x, total, f"{total:.2f}", ha="center", va="bottom")
    ax.set(ylabel="GiB", title=title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    return _save(fig, path)


def plot_loss_curves(histories: dict[str, list[dict]], scores: dict[str, float] | None = None,
                     path: str | Path | None = None, score_name: str = "test F1",
                     title: str = "Runs compared") -> Figure:
    """Several runs' losses overlaid (train solid, eval dashed), and a bar per run of its task score.

    `histories` maps a run name to its Trainer log history (or metrics.json's train_loss/eval_loss
    lists concatenated); `scores` to one number each (e.g. test F1), drawn in a second panel.
    """
    fig = Figure(figsize=(10 if scores else 6, 3.8))
    axes = fig.subplots(1, 2 if scores else 1, gridspec_kw={"width_ratios": [2, 1]} if scores else None)
    ax = axes[0] if scores else axes
    for n, (name, history) in enumerate(histories.items()):
        colour = f"C{n}"
        train = [(e["step"], e["loss"]) for e in history if "loss" in e]
        evals = [(e["step"], e["eval_loss"]) for e in history if "eval_loss" in e]
        if train:
            ax.plot(*zip(*train), color=colour, label=name)
        if evals:
            ax.plot(*zip(*evals), color=colour, linestyle="--", marker="o", markersize=3)
    ax.set(xlabel="optimizer step", ylabel="loss (solid: train, dashed: eval)", yscale="log", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if scores:
        names = list(scores)
        axes[1].barh(names, [scores[name] for name in names], color=[f"C{list(histories).index(n)}"
                                                                      if n in histories else "grey" for n in names])
        for y, name in enumerate(names):
            axes[1].text(scores[name], y, f" {scores[name]:.3f}", va="center")
        axes[1].set(xlabel=score_name, xlim=(0, 1.15))
        axes[1].invert_yaxis()
    fig.tight_layout()
    return _save(fig, path)


def plot_grouped_bars(values: dict[str, dict[str, float]], path: str | Path | None = None, title: str = "",
                      ylabel: str = "", value_format: str = "{:.2f}") -> Figure:
    """Bars grouped by category, one colour per series: ``{series: {category: value}}``.

    E.g. per-type F1 of base, baseline and tuned, or the number of answers per error category.
    """
    categories = list(dict.fromkeys(c for series in values.values() for c in series))
    fig = Figure(figsize=(max(5.0, 1.1 * len(categories) * max(1, len(values)) / 2 + 2), 3.6))
    ax = fig.subplots()
    width = 0.8 / max(1, len(values))
    for n, (name, series) in enumerate(values.items()):
        xs = np.arange(len(categories)) + (n - (len(values) - 1) / 2) * width
        heights = [series.get(c, 0) for c in categories]
        bars = ax.bar(xs, heights, width, label=name)
        ax.bar_label(bars, labels=[value_format.format(h) for h in heights], fontsize=7, padding=1)
    ax.set_xticks(range(len(categories)), categories, rotation=20, ha="right")
    ax.set(ylabel=ylabel, title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)

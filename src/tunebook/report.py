"""The evaluation report: the base / tuned / baseline table, results.json and predictions.jsonl.

:mod:`tunebook.evaluation` computes the numbers; this module only presents and stores them, so
the two can change independently (and the table can be printed from a saved results.json).

``results.json``: run facts, then one entry per model (``base``, ``tuned``) and ``baselines``
(``{name: {metrics..., num_examples, train_examples, seconds}}``), ``best_baseline``,
``tuned_beats_baseline`` and ``baseline_warning``. ``predictions.jsonl``: one line per scored row
with its input, reference, each model's output and the best baseline's output.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .baselines import HEADLINE_METRICS, baseline_warning, best_baseline
from .config import RunConfig
from .files import write_json, write_text
from .formatting import example_input
from .log import get_logger

if TYPE_CHECKING:  # evaluation imports this module; the split type is only needed for annotations
    from .evaluation import EvalSplit

logger = get_logger()

# Rows of the before/after table per task; dotted keys reach into nested results.
TABLE_KEYS = {
    "extraction": ["f1", "precision", "recall", "valid_json_rate", "exact_match"],
    "text": ["exact_match", "token_f1", "rouge_l"],
    "classification": ["accuracy", "macro_f1"],
}


def _lookup(results: dict, key: str) -> Any:
    for part in key.split("."):
        if not isinstance(results, dict) or part not in results:
            return None
        results = results[part]
    return results


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def compare_table(base: dict, tuned: dict, keys: list[str], baselines: dict[str, dict] | None = None,
                  best: str | None = None) -> str:
    """A before/after text table: metric, base, tuned, delta (tuned - base), then one column per baseline.

    Dotted keys reach nested values (``per_type.person.f1``). The `best` baseline's column is
    headed ``<name> (best)``, so a reader sees which simple model the tuned one has to beat.
    """
    baselines = baselines or {}
    names = list(baselines)
    rows = [("metric", "base", "tuned", "delta", *(f"{n} (best)" if n == best else n for n in names))]
    for key in keys:
        a, b = _lookup(base, key), _lookup(tuned, key)
        delta = f"{b - a:+.4f}" if isinstance(a, (int, float)) and isinstance(b, (int, float)) else "-"
        rows.append((key, _fmt(a), _fmt(b), delta, *(_fmt(_lookup(baselines[n], key)) for n in names)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in rows]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])


def table_keys(task: str, results: dict[str, dict]) -> list[str]:
    """The table's rows for `task`: its metrics, per-type F1 for extraction, perplexity for generation."""
    keys = TABLE_KEYS[task] + [f"per_type.{t}.f1" for t in next(iter(results.values())).get("per_type", {})]
    return keys + (["perplexity"] if task != "classification" else [])


def _summary(result: dict) -> dict:
    """The results.json part of an evaluation: metrics only (per-example data goes to predictions.jsonl)."""
    summary = {k: v for k, v in result.items() if k not in ("predictions", "references", "inputs", "errors")}
    if "errors" in result:
        summary["error_counts"] = result["errors"]["counts"]
        summary["error_examples"] = result["errors"]["examples"]
    return summary


def write_results(out: Path, config: RunConfig, split: EvalSplit, results: dict[str, dict],
                  adapter: Path | None, baselines: dict[str, dict] | None = None) -> dict:
    """results.json (metrics, each with its row count) and predictions.jsonl (one line per row)."""
    task = "classification" if config.data.recipe == "classification" else next(iter(results.values()))["task"]
    summary = {"model": config.model.name, "quantization": config.model.quantization,
               "adapter": str(adapter) if adapter else None, "split": split.name, "num_examples": len(split),
               "split_rows": split.total, "task": task}
    if task == "classification":  # texts past the length limit are scored on their first tokens: say how many
        summary.update(max_length=split.max_length, truncated_rows=sum(split.tokenized["truncated"]))
    summary.update({name: _summary(r) for name, r in results.items()})
    best = best_baseline(baselines, task) if baselines else None
    if baselines:
        tuned = results.get("tuned")
        warning = baseline_warning(tuned, baselines, task) if tuned else None
        summary.update(baselines={name: _summary(b) for name, b in baselines.items()}, best_baseline=best,
                       tuned_beats_baseline=None if tuned is None else warning is None, baseline_warning=warning)
    outputs = {**results, **({"baseline": baselines[best]} if best else {})}
    first = next(iter(results.values()))  # every model result holds the same references
    names = first.get("labels")  # classification: label names by id
    lines = []
    for i, example in enumerate(split.raw):
        reference = first["references"][i]
        row: dict[str, Any] = {"row": example["row"], "input": example["text"] if task == "classification"
                               else example_input(example, config.data),
                               "reference": names[reference] if names else reference}
        for name, r in outputs.items():
            row[f"{name}_output"] = names[r["predictions"][i]] if names else r["predictions"][i]
            if "errors" in r:
                row[f"{name}_errors"] = r["errors"]["per_example"][i]
        lines.append(json.dumps(row, ensure_ascii=False))
    write_json(out / "results.json", summary)
    write_text(out / "predictions.jsonl", "".join(line + "\n" for line in lines))
    return summary


def log_report(summary: dict, results: dict[str, dict], baselines: dict[str, dict] | None = None) -> None:
    """Log the base / tuned / baselines table, which baseline is best, and the warning when tuned loses."""
    task, best = summary["task"], summary.get("best_baseline")
    table = compare_table(results.get("base", {}), results.get("tuned", {}), table_keys(task, results),
                          baselines, best)
    logger.info(f"{summary['split']}, {summary['num_examples']} rows:\n{table}")
    if baselines and best:
        fitted = baselines[best]
        logger.info(f"baselines: trained on the {fitted['train_examples']} train rows the model trained on, scored "
                    f"on the same {fitted['num_examples']} rows; best by {', '.join(HEADLINE_METRICS[task])}: "
                    f"{best} ({sum(b['seconds'] for b in baselines.values()):.1f} s for all)")
    if summary.get("baseline_warning"):
        logger.warning(summary["baseline_warning"])

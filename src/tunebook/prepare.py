"""The prepare stage: raw files -> validated splits -> token ids and labels, with length statistics.

Used by training (in memory) and by ``python -m tunebook prepare`` (written to disk so you can
inspect exactly what the model will see).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from datasets import DatasetDict
from transformers import PreTrainedTokenizerBase

from .config import RunConfig
from .data import load_and_validate
from .formatting import length_stats, suggest_max_length, tokenize_dataset
from .models import load_tokenizer
from .plots import plot_length_histogram


@dataclass
class Prepared:
    raw: DatasetDict  # validated splits with role columns (text for evaluation)
    tokenized: DatasetDict  # input_ids / labels (or label) / length
    report: dict  # validation report: sizes, duplicates, labels
    stats: dict  # token-length statistics of the training split

    @property
    def labels(self) -> list[str] | None:
        return self.report.get("labels")


def prepare_tokenized(config: RunConfig, tokenizer: PreTrainedTokenizerBase,
                      histogram_path: str | Path | None = None) -> Prepared:
    """Validate, split and tokenize the data of `config`; report (and plot) token lengths.

    With ``data.max_length: null`` the length is chosen to fit the longest training example, so
    nothing is cut; with a set value, longer examples are dropped and counted, never truncated.
    """
    raw, report = load_and_validate(config.data)
    tokenized = tokenize_dataset(raw, tokenizer, config.data, report.get("labels"))
    lengths = tokenized["train"]["length"]
    stats = length_stats(lengths, config.data.max_length or suggest_max_length(lengths))
    if histogram_path is not None:
        plot_length_histogram(lengths, stats["max_length"], histogram_path)
    return Prepared(raw, tokenized, report, stats)


def prepare_dataset(config: RunConfig, out_dir: str | Path | None = None) -> dict:
    """Run the prepare stage and write it to disk: processed dataset, stats JSON, histogram PNG."""
    out = Path(out_dir or Path(config.train.output_dir) / "prepared")
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(config.model.name, config.model.trust_remote_code)
    prepared = prepare_tokenized(config, tokenizer, out / "length_histogram.png")
    prepared.tokenized.save_to_disk(str(out / "dataset"))
    stats = {"validation": prepared.report, "train_token_lengths": prepared.stats}
    (out / "stats.json").write_text(json.dumps(stats, indent=2))
    return {"out_dir": out, "stats": stats, "prepared": prepared}

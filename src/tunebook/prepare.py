"""The prepare stage: raw files -> validated splits -> token ids and labels, with length statistics.

Used by training (in memory) and by ``python -m tunebook prepare`` (written to disk so you can
inspect exactly what the model will see).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from datasets import DatasetDict
from transformers import PreTrainedTokenizerBase

from .config import RunConfig
from .data import load_and_validate
from .errors import ConfigError
from .files import write_json
from .formatting import length_stats, suggest_max_length, tokenize_dataset
from .models import load_tokenizer
from .plots import plot_length_histogram


@dataclass
class Prepared:
    raw: DatasetDict  # validated splits with role columns and `row` (text for evaluation)
    tokenized: DatasetDict  # input_ids / labels (or label) / length / row
    report: dict  # validation report: sizes, sources, duplicates, labels
    stats: dict  # token-length statistics of the training split

    @property
    def labels(self) -> list[str] | None:
        return self.report.get("labels")


def model_context(tokenizer: PreTrainedTokenizerBase) -> tuple[int, str] | None:
    """Tokens the model was trained to read, and where that number comes from (None: unknown).

    The tokenizer's model_max_length when it sets one, else the model config's position limit
    (SmolLM2's tokenizer says "no limit"; its config.json says 8192).
    """
    if tokenizer.model_max_length < 1_000_000:
        return tokenizer.model_max_length, "tokenizer.model_max_length"
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(tokenizer.name_or_path)
    except Exception:  # noqa: BLE001 - a tokenizer without a model folder beside it: nothing to compare with
        return None
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        if isinstance(getattr(config, key, None), int):
            return getattr(config, key), f"{key} in its config.json"
    return None


def check_max_length(tokenizer: PreTrainedTokenizerBase, max_length: int | None) -> None:
    """``data.max_length`` past the model's context would train positions the model never learnt."""
    context = model_context(tokenizer) if max_length is not None else None
    if context is not None and max_length > context[0]:
        raise ConfigError(f"data.max_length: {max_length} is longer than the model's context ({context[0]} tokens, "
                          f"{context[1]}). Set data.max_length <= {context[0]}, or null.")


def prepare_tokenized(config: RunConfig, tokenizer: PreTrainedTokenizerBase,
                      histogram_path: str | Path | None = None) -> Prepared:
    """Validate, split and tokenize the data of `config`; report (and plot) token lengths.

    With ``data.max_length: null`` the length is chosen to fit the longest training example, so
    nothing is cut; with a set value, longer generation examples are dropped and counted, never
    truncated, and classification texts are truncated and counted.
    """
    check_max_length(tokenizer, config.data.max_length)
    raw, report = load_and_validate(config.data)
    tokenized = tokenize_dataset(raw, tokenizer, config.data)
    lengths = tokenized["train"]["length"]
    stats = length_stats(lengths, config.data.max_length or suggest_max_length(lengths))
    if histogram_path is not None:
        plot_length_histogram(lengths, stats["max_length"], histogram_path)
    return Prepared(raw, tokenized, report, stats)


def preview_examples(prepared: Prepared, count: int = 3, width: int = 200) -> str:
    """The first `count` training rows as the recipe reads them (roles, label names), one field a line.

    What a converter made of the file (a CoNLL sentence's JSON answer, a 1-based class id's name)
    is the first thing to check when you bring your own data, so the answer (`output`) is shown
    whole; longer inputs are cut to `width` characters, and line breaks and tabs are made visible.
    """
    train = prepared.raw["train"]
    source, unit = prepared.report["sources"]["train"], prepared.report["row_numbers"]["train"]
    lines: list[str] = []
    for example in train.select(range(min(count, len(train)))):
        lines.append(f"{source}, {unit} {example['row']}:")
        for role, value in example.items():
            if role == "row" or value in ("", None):
                continue
            if role == "label" and prepared.labels:
                value = f"{value} ({prepared.labels[value]})"
            text = str(value).replace("\r\n", "\n").replace("\n", " | ").replace("\t", " ")
            if role != "output" and len(text) > width:
                text = text[:width - 3] + "..."
            lines.append(f"  {role:<12}{text}")
    return "\n".join(lines)


def prepare_dataset(config: RunConfig, out_dir: str | Path | None = None) -> dict:
    """Run the prepare stage and write it to disk: processed dataset, stats JSON, histogram PNG."""
    out = Path(out_dir or Path(config.train.output_dir) / "prepared")
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(config.model.name, config.model.trust_remote_code)
    prepared = prepare_tokenized(config, tokenizer, out / "length_histogram.png")
    prepared.tokenized.save_to_disk(str(out / "dataset"))
    stats = {"validation": prepared.report, "train_token_lengths": prepared.stats}
    write_json(out / "stats.json", stats)
    return {"out_dir": out, "stats": stats, "prepared": prepared}

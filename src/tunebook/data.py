"""Load, check and split a dataset before any model is loaded.

Fine-tuning runs fail most often on data, and fail *silently*: a renamed column trains on empty
strings, a label outside the label set crashes at step 900, test rows that also sit in train make
the evaluation meaningless. So this stage validates everything up front and says which file, line
and field is wrong and how to fix it. (Reading the files: :mod:`tunebook.readers`.)

Recipes and the roles they need (map your column names to roles in ``data.columns``; a text role
may name several columns, joined with a newline, e.g. ``text: [title, description]``):

- ``instruction``: ``output`` plus ``instruction`` (or a fixed ``data.instruction``), optional ``input``.
  CoNLL/BIO token files become ``input`` (the sentence) and ``output`` (a JSON answer; :mod:`tunebook.ner`).
- ``chat``: ``messages``, a list of ``{"role", "content"}`` ending with an assistant turn (OpenAI
  style), or ShareGPT's ``conversations`` of ``{"from": "human"/"gpt", "value"}``
- ``classification``: ``text`` and ``label`` (label names, or integer ids of ``data.labels``)

Every example keeps ``row``: its line (or 1-based row) in the file it came from, so errors and
predictions point at the place a user can open.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter

import numpy as np
from datasets import Dataset, DatasetDict

from .config import DataConfig
from .errors import DataValidationError
from .log import get_logger
from .ner import entity_types, to_extraction
from .readers import SPLITS, Table, read_splits

__all__ = ["DataValidationError", "ROLES", "load_and_validate", "example_key", "label_names"]

logger = get_logger()

ROLES = {
    "instruction": ("instruction", "input", "output"),
    "chat": ("messages",),
    "classification": ("text", "label"),
}
REQUIRED_ROLES = {"instruction": ("output",), "chat": ("messages",), "classification": ("text", "label")}
# ShareGPT speaker names -> chat roles.
_SPEAKERS = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "model": "assistant",
             "chatgpt": "assistant", "bard": "assistant", "bing": "assistant", "system": "system"}


def _fail(table: Table, i: int, field: str, problem: str, fix: str) -> DataValidationError:
    return DataValidationError(f"{table.where(i)}, field '{field}': {problem}. {fix}")


def _columns_for(role: str, config: DataConfig) -> list[str]:
    mapped = config.columns.get(role, role)
    return list(mapped) if isinstance(mapped, list) else [mapped]


def _conll_examples(tables: dict[str, Table], config: DataConfig) -> dict[str, Table]:
    """CoNLL sentences -> input/output rows, with the same answer keys in every split."""
    if config.recipe != "instruction":
        raise DataValidationError(f"{next(iter(tables.values())).source} is a CoNLL/BIO token file; it trains "
                                  f"the extraction task, which uses data.recipe: instruction (not '{config.recipe}').")
    if not all(t.conll for t in tables.values()):
        raise DataValidationError(f"Mixed formats: {[t.source for t in tables.values()]} are not all CoNLL files.")
    keys = entity_types([row for t in tables.values() for row in t.rows])
    logger.info(f"CoNLL/BIO data: sentences -> input, tags -> a JSON answer with keys {keys}")
    return {s: Table([to_extraction(r, keys) for r in t.rows], t.source, t.lines) for s, t in tables.items()}


def _check_columns(table: Table, config: DataConfig) -> None:
    roles = ROLES[config.recipe]
    required = list(REQUIRED_ROLES[config.recipe]) + (["instruction"] if config.recipe == "instruction"
                                                      and not config.instruction else [])
    present = table.columns
    # Required roles must exist; so must any column the config names (a typo in data.columns.input
    # would otherwise train without inputs, silently).
    for role in dict.fromkeys([*required, *config.columns]):
        for column in _columns_for(role, config):
            if column in present or (role == "messages" and column == "messages" and "conversations" in present):
                continue
            raise DataValidationError(
                f"{table.source}: missing column '{column}' (role '{role}' of recipe '{config.recipe}'). Columns "
                f"present: {present}. Set data.columns.{role} to the column that holds it"
                + (", or give a fixed data.instruction." if role == "instruction" else "."))
    unknown = set(config.columns) - set(roles)
    if unknown:
        raise DataValidationError(f"data.columns has role(s) {sorted(unknown)} that recipe '{config.recipe}' "
                                  f"does not use. Its roles are {list(roles)}.")


def _text_role(table: Table, i: int, row: dict, role: str, config: DataConfig, required: bool) -> str:
    values = [row.get(column) for column in _columns_for(role, config)]
    for column, value in zip(_columns_for(role, config), values):
        if value is not None and not isinstance(value, str):
            raise _fail(table, i, column, f"expected text, got {value!r:.60}", "Fix the row.")
    text = "\n".join(v for v in values if v and v.strip())
    if required and not text.strip():
        raise _fail(table, i, "/".join(_columns_for(role, config)), f"expected non-empty text, got {values[0]!r}",
                    "Fix or remove the row.")
    return text


def _messages(table: Table, i: int, row: dict, config: DataConfig) -> list[dict[str, str]]:
    column = _columns_for("messages", config)[0]
    if column not in row and column == "messages" and "conversations" in row:
        column = "conversations"
    value = row.get(column)
    fix = ('Each row needs a list of {"role": ..., "content": ...} (or ShareGPT {"from": ..., "value": ...}) '
           "messages ending with an assistant turn.")
    if not isinstance(value, list) or not value:
        raise _fail(table, i, column, f"expected a non-empty list, got {value!r:.80}", fix)
    messages = []
    for m in value:
        if isinstance(m, dict) and "from" in m:  # ShareGPT
            m = {"role": _SPEAKERS.get(str(m["from"]).lower()), "content": m.get("value")}
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in (
                "system", "user", "assistant"):
            raise _fail(table, i, column, f"malformed message {m!r:.80}", fix)
        messages.append({"role": m["role"], "content": m["content"]})
    if messages[-1]["role"] != "assistant" or not messages[-1]["content"].strip():
        raise _fail(table, i, column, "the last message is not a non-empty assistant turn", fix)
    return messages


def _examples(table: Table, config: DataConfig) -> list[dict]:
    """The table's rows as role-named examples, each value checked; ``row`` says where it came from."""
    _check_columns(table, config)
    out = []
    for i, row in enumerate(table.rows):
        if config.recipe == "instruction":
            example = {"instruction": _text_role(table, i, row, "instruction", config, not config.instruction),
                       "input": _text_role(table, i, row, "input", config, False),
                       "output": _text_role(table, i, row, "output", config, True)}
        elif config.recipe == "chat":
            example = {"messages": _messages(table, i, row, config)}
        else:
            label = row.get(_columns_for("label", config)[0])
            if label is None or isinstance(label, (list, dict)) or (isinstance(label, str) and not label.strip()):
                raise _fail(table, i, _columns_for("label", config)[0], f"expected a label, got {label!r}",
                            "Fix or remove the row.")
            example = {"text": _text_role(table, i, row, "text", config, True), "label": label}
        out.append({**example, "row": table.row_id(i)})
    return out


def example_key(example: dict) -> str:
    """The text that identifies an example for duplicate and leakage checks (its input side)."""
    if "messages" in example:
        return "\n".join(m["content"] for m in example["messages"] if m["role"] != "assistant")
    if "text" in example:
        return example["text"]
    return f"{example.get('instruction') or ''}\n{example.get('input') or ''}"


def _is_integer(value: object) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, float):
        return value.is_integer()
    return isinstance(value, int) or (isinstance(value, str) and value.strip().lstrip("-").isdigit())


def label_names(train: list[dict], config: DataConfig) -> list[str]:
    """Label names in id order: ``data.labels``, else the training labels (numbers sorted as numbers)."""
    if config.labels:
        return list(config.labels)
    values = {ex["label"] for ex in train}
    if all(_is_integer(v) for v in values):
        return [str(v) for v in sorted({int(float(v)) for v in values})]
    return sorted({str(v).strip() for v in values})


def _label_id(value: object, names: dict[str, int], config: DataConfig) -> int | str:
    """The id of a label value, or the reason it has none."""
    text = str(value).strip()
    if not config.labels and _is_integer(value) and int(float(value)) < config.first_label_id:
        # Ids read from the data (no data.labels) still count from first_label_id: a 0 in 1-based
        # data would otherwise become a class of its own.
        return (f"id {value!r} is below data.first_label_id ({config.first_label_id}). Fix the row, or set "
                "data.first_label_id: 0 if ids start at 0.")
    if text in names:
        return names[text]
    if config.labels and _is_integer(value):
        first, n = config.first_label_id, len(names)
        if first <= int(float(value)) < first + n:
            return int(float(value)) - first
        hint = ""
        if int(float(value)) == first + n and first == 0:
            hint = " If your ids start at 1, set data.first_label_id: 1."
        elif int(float(value)) == 0 and first == 1:
            hint = " Label 0 in 1-based data: fix the row, or set data.first_label_id: 0 if ids start at 0."
        return f"id {value!r} is outside {first}..{first + n - 1}, the ids of data.labels {list(names)}.{hint}"
    return (f"label {value!r} is not in the label set {list(names)}. Fix the row, or list every label in "
            "data.labels (integer ids count from data.first_label_id).")


def _encode_labels(examples: list[dict], names: list[str], table: Table, config: DataConfig) -> None:
    index = {name: i for i, name in enumerate(names)}
    column = _columns_for("label", config)[0]
    for i, example in enumerate(examples):
        label = _label_id(example["label"], index, config)
        if isinstance(label, str):
            raise _fail(table, i, column, label.split(". ", 1)[0], label.split(". ", 1)[1] if ". " in label else "")
        example["label"] = label


def _leaks(examples: dict[str, list[dict]], tables: dict[str, Table], config: DataConfig, report: dict) -> None:
    """Stop (default) or drop (``data.drop_leaked_rows``) validation/test rows whose input is in train."""
    train_keys = {example_key(ex) for ex in examples["train"]}
    for split in ("validation", "test"):
        if split not in examples:
            continue
        leaked = [ex for ex in examples[split] if example_key(ex) in train_keys]
        if not leaked:
            continue
        source, train_source = tables[split].source, tables["train"].source
        if not config.drop_leaked_rows:
            where = "line" if tables[split].lines else "row"
            raise DataValidationError(
                f"{len(leaked)} example(s) of {source} also appear in {train_source} (first: {source}, {where} "
                f"{leaked[0]['row']}: {example_key(leaked[0]).strip()[:80]!r}). Evaluation on leaked rows "
                "overstates quality: remove them from one file, or set data.drop_leaked_rows: true to drop them.")
        examples[split] = [ex for ex in examples[split] if example_key(ex) not in train_keys]
        report.setdefault("dropped_leaked_rows", {})[split] = len(leaked)
        logger.warning(f"dropped {len(leaked)} of {len(leaked) + len(examples[split])} rows of {source} that also "
                       f"appear in {train_source} (data.drop_leaked_rows)")
        if not examples[split]:
            raise DataValidationError(f"Every row of {source} also appears in {train_source}: nothing is left to "
                                      "evaluate on. Give held-out rows.")


def _apportion(total: int, sizes: list[int]) -> list[int]:
    """Split `total` over strata in proportion to `sizes` (largest remainders), so the sum is exact."""
    whole = sum(sizes)
    shares = [total * size / whole for size in sizes]
    counts = [math.floor(share) for share in shares]
    by_remainder = sorted(range(len(sizes)), key=lambda i: (shares[i] - counts[i], sizes[i]), reverse=True)
    for i in by_remainder[:total - sum(counts)]:
        counts[i] += 1
    return counts


def carve_splits(examples: dict[str, list[dict]], config: DataConfig, source: str) -> dict[str, list[dict]]:
    """Train/validation/test, carving only the missing ones from train, deterministically for a seed.

    Stratified by label for classification, so every split keeps the class balance (a random
    split of a small dataset can leave a class out of the test set). Copies of one example move
    together, so a duplicated row cannot land in train and test.
    """
    missing = [s for s in ("validation", "test") if s not in examples]
    out = dict(examples)
    if missing:
        fractions = {"validation": config.validation_fraction, "test": config.test_fraction}
        groups: dict[tuple[str, str], list[dict]] = {}
        for ex in examples["train"]:
            stratum = str(ex["label"]) if config.recipe == "classification" else ""
            groups.setdefault((stratum, example_key(ex)), []).append(ex)
        strata = sorted({k[0] for k in groups})
        sizes = [sum(k[0] == s for k in groups) for s in strata]
        # Half rounds up (Python's round(0.5) is 0): 5 rows at 0.1 give 1 row, as the advice below says.
        quotas = {split: _apportion(math.floor(fractions[split] * len(groups) + 0.5), sizes) for split in missing}
        rng = np.random.default_rng(config.seed)
        chosen: dict[str, list[dict]] = {s: [] for s in ("train", *missing)}
        for n, stratum in enumerate(strata):
            keys = [k for k in groups if k[0] == stratum]
            order, start = rng.permutation(len(keys)), 0
            for split in missing:
                chosen[split] += [ex for j in order[start:start + quotas[split][n]] for ex in groups[keys[j]]]
                start += quotas[split][n]
            chosen["train"] += [ex for j in order[start:] for ex in groups[keys[j]]]
        for split, rows in chosen.items():
            out[split] = sorted(rows, key=lambda ex: ex["row"])
        for split in missing:
            if not out[split] and fractions[split] > 0:
                raise DataValidationError(
                    f"The {split} split carved from {source} would be empty: {len(groups)} distinct example(s) x "
                    f"data.{split}_fraction={fractions[split]} rounds to 0 rows. Give a {split} file, raise "
                    f"data.{split}_fraction, or bring at least {math.ceil(0.5 / fractions[split])} distinct examples.")
    if not out["train"]:
        raise DataValidationError(f"No training examples are left in {source} after carving validation/test. "
                                  "Bring more examples or lower data.validation_fraction/test_fraction.")
    return {s: out[s] for s in SPLITS}


def load_and_validate(config: DataConfig) -> tuple[DatasetDict, dict[str, object]]:
    """The whole data stage: read, map columns, validate, split, cap. Returns (splits, report).

    The report holds row counts per source and split, duplicates, leaked rows dropped, labels
    and sources, for the caller to print and save.
    """
    tables = read_splits(config.path, config.csv_header)
    if any(t.conll for t in tables.values()):
        tables = _conll_examples(tables, config)
        # Token files have no named columns: data.columns (e.g. {input: sentence} copied from a
        # JSONL config) has nothing to map, the rows are input/output already.
        config = dataclasses.replace(config, columns={})
    if "train" not in tables:
        raise DataValidationError(f"No train split found (splits: {list(tables)}). Name a file train.*, or map "
                                  "data.path: {train: ...}.")
    examples = {split: _examples(table, config) for split, table in tables.items()}
    report: dict[str, object] = {"rows": {s: len(t.rows) for s, t in tables.items()},
                                 "sources": {s: t.source for s, t in tables.items()},
                                 # what a row's `row` number counts: its line, or its 1-based row (Parquet, JSON list)
                                 "row_numbers": {s: "line" if t.lines else "row" for s, t in tables.items()}}
    if config.recipe == "classification":
        names = label_names(examples["train"], config)
        for split, rows in examples.items():
            _encode_labels(rows, names, tables[split], config)
        report["labels"] = names
    for split, rows in examples.items():
        if duplicates := sum(n - 1 for n in Counter(map(example_key, rows)).values() if n > 1):
            report[f"duplicates_in_{split}"] = duplicates
            logger.warning(f"{duplicates} duplicate example(s) in {tables[split].source} (kept; consider removing)")
    _leaks(examples, tables, config, report)
    examples = carve_splits(examples, config, tables["train"].source)
    if config.max_train_examples is not None and config.max_train_examples < len(examples["train"]):
        # A seeded sample, not the first N rows: files sorted by label would otherwise lose classes.
        keep = np.random.default_rng(config.seed).choice(len(examples["train"]), config.max_train_examples,
                                                         replace=False)
        examples["train"] = [examples["train"][i] for i in sorted(keep)]
    report["split_sizes"] = {s: len(rows) for s, rows in examples.items()}
    train = Dataset.from_list(examples["train"])
    # An empty split (a fraction of 0, no file) keeps train's columns, so tokenizing it is a no-op.
    return DatasetDict({s: Dataset.from_list(rows) if rows else train.select([])
                        for s, rows in examples.items()}), report

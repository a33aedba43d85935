"""Load, check and split a dataset before any model is loaded.

Fine-tuning runs fail most often on data, and fail *silently*: a renamed column trains on empty
strings, a label outside the label set crashes at step 900, test rows that also sit in train make
the evaluation meaningless. So this stage validates everything up front and says which file, row
and field is wrong and how to fix it.

Recipes and the roles they need (map your column names to roles in ``data.columns``):

- ``instruction``: ``output`` plus ``instruction`` (or a fixed ``data.instruction``), optional ``input``
- ``chat``: ``messages``, a list of ``{"role", "content"}`` ending with an assistant turn
- ``classification``: ``text`` and ``label`` (label names or ids)
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
from datasets import Dataset, DatasetDict, load_dataset

from .config import DataConfig

ROLES = {
    "instruction": ("instruction", "input", "output"),
    "chat": ("messages",),
    "classification": ("text", "label"),
}
REQUIRED_ROLES = {"instruction": ("output",), "chat": ("messages",), "classification": ("text", "label")}
SPLITS = ("train", "validation", "test")
_SPLIT_ALIASES = {"train": "train", "training": "train", "validation": "validation", "valid": "validation",
                  "val": "validation", "dev": "validation", "test": "test", "eval": "validation"}
_LOADERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


class DataValidationError(ValueError):
    """The data cannot be trained on as it is; the message names the file, row and fix."""


def _load_file(path: Path) -> Dataset:
    loader = _LOADERS.get(path.suffix.lower())
    if loader is None:
        raise DataValidationError(
            f"{path}: unsupported file type '{path.suffix}'. Use one of {sorted(_LOADERS)}."
        )
    if path.stat().st_size == 0:
        raise DataValidationError(f"{path}: the file is empty. Add examples or remove the file.")
    try:
        return Dataset.from_json(str(path)) if loader == "json" else getattr(Dataset, f"from_{loader}")(str(path))
    except Exception as exc:  # datasets raises StopIteration, ValueError, ArrowInvalid... per format
        raise DataValidationError(
            f"{path}: could not read it as {loader} ({type(exc).__name__}: {exc}). A file with only "
            "a header or no rows is empty; otherwise check its format."
        ) from None


def load_raw(path: str) -> tuple[DatasetDict, dict[str, str]]:
    """Read a file, a folder of split files, or a Hub dataset id.

    Returns the splits and, per split, where it came from (used in error messages). A folder's
    files are named after their split (``train.jsonl``, ``validation.csv``, ``test.parquet``;
    ``valid``/``val``/``dev`` are accepted); a single file becomes the ``train`` split.
    """
    local = Path(path).expanduser()
    if local.is_file():
        return DatasetDict(train=_load_file(local)), {"train": str(local)}
    if local.is_dir():
        files = sorted(p for p in local.iterdir() if p.suffix.lower() in _LOADERS)
        by_split = {_SPLIT_ALIASES[p.stem.lower()]: p for p in files if p.stem.lower() in _SPLIT_ALIASES}
        if not by_split and len(files) == 1:
            by_split = {"train": files[0]}
        if not by_split:
            raise DataValidationError(
                f"{local}: found no data files named train/validation/test with extensions "
                f"{sorted(_LOADERS)} (files there: {[p.name for p in local.iterdir()]})."
            )
        return (DatasetDict({s: _load_file(p) for s, p in by_split.items()}),
                {s: str(p) for s, p in by_split.items()})
    try:
        hub = load_dataset(path)
    except Exception as exc:  # datasets raises many types for "not found" and "offline"
        raise DataValidationError(
            f"'{path}' is not a local file or folder, and loading it from the Hugging Face Hub failed "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). Check the path, "
            "or use a shipped dataset such as data/extraction."
        ) from None
    splits = {_SPLIT_ALIASES.get(name, name): ds for name, ds in hub.items()}
    return DatasetDict(splits), {name: f"{path} [{name}]" for name in splits}


def select_roles(raw: DatasetDict, sources: dict[str, str], config: DataConfig) -> DatasetDict:
    """Rename the user's columns to the recipe's roles and drop the other columns."""
    roles = ROLES[config.recipe]
    unknown = set(config.columns) - set(roles)
    if unknown:
        raise DataValidationError(
            f"data.columns has role(s) {sorted(unknown)} that recipe '{config.recipe}' does not use. "
            f"Its roles are {list(roles)}."
        )
    required = list(REQUIRED_ROLES[config.recipe])
    if config.recipe == "instruction" and not config.instruction:
        required.insert(0, "instruction")
    out = {}
    for split, dataset in raw.items():
        mapping = {role: config.columns.get(role, role) for role in roles}
        # Required roles must exist; so must any column the config names explicitly (a typo in
        # data.columns.input would otherwise train without inputs, silently).
        for role in dict.fromkeys([*required, *config.columns]):
            if mapping[role] not in dataset.column_names:
                raise DataValidationError(
                    f"{sources[split]}: missing column '{mapping[role]}' (role '{role}' of recipe "
                    f"'{config.recipe}'). Columns present: {dataset.column_names}. Set "
                    f"data.columns.{role} to the column that holds it"
                    + (", or give a fixed data.instruction." if role == "instruction" else ".")
                )
        present = {role: col for role, col in mapping.items() if col in dataset.column_names}
        dataset = dataset.select_columns(list(present.values()))
        dataset = dataset.rename_columns({col: role for role, col in present.items() if col != role})
        out[split] = dataset
    return DatasetDict(out)


def _row_error(source: str, row: int, field: str, problem: str, fix: str) -> DataValidationError:
    # Rows are counted from 1, like line numbers in a JSONL or CSV file (after the header).
    return DataValidationError(f"{source}, row {row + 1}, field '{field}': {problem}. {fix}")


def example_key(example: dict) -> str:
    """The text that identifies an example for duplicate and leakage checks (its input side)."""
    if "messages" in example:
        return "\n".join(m["content"] for m in example["messages"] if m["role"] != "assistant")
    if "text" in example:
        return example["text"]
    return f"{example.get('instruction') or ''}\n{example.get('input') or ''}"


def validate(data: DatasetDict, sources: dict[str, str], config: DataConfig,
             label_names: list[str] | None = None) -> dict[str, object]:
    """Check every row; raise :class:`DataValidationError` on the first fatal problem.

    Returns a report with counts of warnings (duplicates inside a split) for the caller to print.
    Fatal: an empty split, an empty or non-string text field, a label outside the label set,
    a malformed messages list, and any example shared between train and validation/test.
    """
    report: dict[str, object] = {"rows": {s: len(d) for s, d in data.items()}}
    text_roles = {"instruction": ("output",), "classification": ("text",), "chat": ()}[config.recipe]
    if config.recipe == "instruction" and not config.instruction:
        text_roles = ("instruction", "output")
    keys: dict[str, list[str]] = {}
    for split, dataset in data.items():
        source = sources[split]
        if len(dataset) == 0:
            raise DataValidationError(f"{source}: the '{split}' split is empty. Add examples or remove the file.")
        for i, example in enumerate(dataset):
            for role in text_roles:
                value = example[role]
                if not isinstance(value, str) or not value.strip():
                    raise _row_error(source, i, config.columns.get(role, role),
                                     f"expected non-empty text, got {value!r}",
                                     "Fix or remove the row.")
            if "input" in example and example["input"] is not None and not isinstance(example["input"], str):
                raise _row_error(source, i, config.columns.get("input", "input"),
                                 f"expected text or empty, got {example['input']!r}", "Fix the row.")
            if config.recipe == "chat":
                _check_messages(example["messages"], source, i, config.columns.get("messages", "messages"))
            if config.recipe == "classification" and label_names is not None:
                label = example["label"]
                # Integer labels count as ids only when data.labels names them; labels read from
                # the data are compared as text (a file with labels 1..4 has names "1".."4").
                as_id = bool(config.labels) and isinstance(label, int) and 0 <= label < len(label_names)
                valid = str(label) in label_names or as_id
                if not valid:
                    raise _row_error(source, i, config.columns.get("label", "label"),
                                     f"label {label!r} is not in the label set {label_names}",
                                     "Fix the row, or list every label in data.labels.")
        keys[split] = [example_key(ex) for ex in dataset]
        duplicates = sum(n - 1 for n in Counter(keys[split]).values() if n > 1)
        report[f"duplicates_in_{split}"] = duplicates
        if duplicates:
            print(f"[tunebook] warning: {duplicates} duplicate example(s) in {source} (kept; consider removing)")
    train_keys = set(keys.get("train", []))
    for split in ("validation", "test"):
        leaked = [k for k in keys.get(split, []) if k in train_keys]
        if leaked:
            raise DataValidationError(
                f"{len(leaked)} example(s) of {sources[split]} also appear in {sources['train']} "
                f"(first: {leaked[0][:80]!r}). Evaluation on leaked rows overstates quality: remove "
                "them from one of the files."
            )
    return report


def _check_messages(messages: object, source: str, row: int, field: str) -> None:
    fix = 'Each row needs a list of {"role": ..., "content": ...} ending with an assistant turn.'
    if not isinstance(messages, list) or not messages:
        raise _row_error(source, row, field, f"expected a non-empty list, got {messages!r}", fix)
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in (
                "system", "user", "assistant"):
            raise _row_error(source, row, field, f"malformed message {m!r}", fix)
    if messages[-1]["role"] != "assistant" or not messages[-1]["content"].strip():
        raise _row_error(source, row, field, "the last message is not a non-empty assistant turn", fix)


def resolve_label_names(data: DatasetDict, config: DataConfig) -> list[str]:
    """Label names in id order: from the config, else sorted from the training split."""
    if config.labels:
        return list(config.labels)
    found = sorted({str(v) for v in data["train"]["label"]})
    return found


def split_dataset(data: DatasetDict, config: DataConfig) -> DatasetDict:
    """Ensure train/validation/test splits. Given splits are kept; missing ones are carved from train.

    Deterministic for a seed; stratified by label for classification, so every split keeps the
    class balance (a random split of a small dataset can leave a class out of the test set).
    """
    if "train" not in data:
        raise DataValidationError(f"No 'train' split found (splits: {list(data)}).")
    missing = [s for s in ("validation", "test") if s not in data]
    if not missing:
        return DatasetDict({s: data[s] for s in SPLITS})
    fractions = {"validation": config.validation_fraction, "test": config.test_fraction}
    rng = np.random.default_rng(config.seed)
    train = data["train"]
    strata = [str(v) for v in train["label"]] if config.recipe == "classification" else [""] * len(train)
    # Copies of one example move together, so a duplicated row cannot land in train and test.
    groups: dict[tuple[str, str], list[int]] = {}
    for i, example in enumerate(train):
        groups.setdefault((strata[i], example_key(example)), []).append(i)
    chosen: dict[str, list[int]] = {s: [] for s in ("train", *missing)}
    for stratum in sorted(set(strata)):
        keys = [k for k in groups if k[0] == stratum]
        order = rng.permutation(len(keys))
        start = 0
        for split in missing:
            n = int(round(fractions[split] * len(keys)))
            chosen[split].extend(i for j in order[start:start + n] for i in groups[keys[j]])
            start += n
        chosen["train"].extend(i for j in order[start:] for i in groups[keys[j]])
    out = {s: data[s] for s in data if s in SPLITS}
    for split, indices in chosen.items():
        out[split] = train.select(sorted(indices))
    return DatasetDict({s: out[s] for s in SPLITS})


def load_and_validate(config: DataConfig) -> tuple[DatasetDict, dict[str, object]]:
    """The whole data stage: load, map columns, validate, split, cap. Returns (splits, report)."""
    raw, sources = load_raw(config.path)
    data = select_roles(raw, sources, config)
    labels = resolve_label_names(data, config) if config.recipe == "classification" and "train" in data else None
    report = validate(data, sources, config, labels)
    data = split_dataset(data, config)
    if config.max_train_examples is not None:
        data["train"] = data["train"].select(range(min(config.max_train_examples, len(data["train"]))))
    if labels is not None:
        report["labels"] = labels
    report["split_sizes"] = {s: len(d) for s, d in data.items()}
    return data, report

"""Read data in the layouts public datasets ship in, into plain rows that remember their line.

Formats, by file suffix (``.txt`` and other suffixes are read as CoNLL when they look like it):

- JSON Lines (``.jsonl``; also ``.json`` files holding one object per line, as many Hub exports do)
- JSON (``.json``): a list of objects (Alpaca's ``alpaca_data.json``), or an object holding one
- CSV and TSV (``.csv``, ``.tsv``) with a header row, or with ``data.csv_header`` naming the
  columns of files that have none (AG News' ``train.csv``, the SMS Spam Collection); a TSV that
  CSV quoting cannot read is read as plain TSV, quotes being text (UCI's ``SMSSpamCollection``)
- Parquet (``.parquet``)
- CoNLL / BIO token files (``.conll``, ``.bio``, ``.iob``, ``.txt``, ...): a token per line, its
  tag in the last column, a blank line between sentences, ``-DOCSTART-`` lines skipped

Layouts: one file (the train split; the others are carved from it), a folder of files named after
their split (``train``, ``validation``/``valid``/``val``/``dev``, ``test``; ``emerging.dev.conll``
counts too), a mapping ``{train: file, validation: file, test: file}``, or a Hub dataset id.

Why not ``datasets.Dataset.from_csv`` and friends: they infer column types from the first rows
and report a bad line 0-based or not at all. Reading rows here keeps every row's line, so each
error says ``file, line N`` as an editor shows it, and values keep the type the file gives them.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import DataValidationError
from .log import get_logger

logger = get_logger()

SPLITS = ("train", "validation", "test")
SPLIT_ALIASES = {"train": "train", "training": "train", "validation": "validation", "valid": "validation",
                 "val": "validation", "dev": "validation", "eval": "validation", "test": "test",
                 # CoNLL-2003's eng.testa / eng.testb are its development and test sets.
                 "testa": "validation", "testb": "test"}
TABLE_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet")
CONLL_SUFFIXES = (".conll", ".conll03", ".bio", ".iob", ".iob2", ".bioes", ".txt")
# A BIO-family tag: O, or a B-/I-/E-/S- (or L-/U-) prefix and a type, e.g. B-PER, I-ORG.
_TAG = re.compile(r"^(O|[BIESLU][-_].+)$")


@dataclass
class Table:
    """Rows of one split as read from one source, with where each row starts."""

    rows: list[dict]
    source: str  # a file path, or "hub-id [split]"
    lines: list[int] | None = None  # 1-based line of each row in its file; None for Parquet/Hub
    conll: bool = False  # rows are {"tokens": [...], "tags": [...]} sentences

    @property
    def columns(self) -> list[str]:
        """Every column name that occurs, in first-seen order (JSON rows may differ in their keys)."""
        return list(dict.fromkeys(key for row in self.rows for key in row))

    def where(self, i: int) -> str:
        """``file, line N`` (or ``row N`` for formats without lines): what an error message points at."""
        return f"{self.source}, line {self.lines[i]}" if self.lines else f"{self.source}, row {i + 1}"

    def row_id(self, i: int) -> int:
        """The number that identifies row `i` in its source: its line, else its 1-based row."""
        return self.lines[i] if self.lines else i + 1


def _text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")  # -sig: a byte-order mark (Excel's CSV export) is not data
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise DataValidationError(
            f"{path}, line {line}: byte 0x{data[exc.start]:02x} is not UTF-8 text. Save the file as UTF-8 "
            f"(e.g. `iconv -f latin1 -t utf-8 {path.name} > fixed_{path.name}`).") from None


def _json_lines(text: str, source: str) -> Table:
    rows, lines = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataValidationError(f"{source}, line {number}: not valid JSON ({exc.msg} at column "
                                      f"{exc.colno}). Each line must hold one JSON object.") from None
        if not isinstance(row, dict):
            raise DataValidationError(f"{source}, line {number}: expected a JSON object, got {row!r:.60}.")
        rows.append(row)
        lines.append(number)
    return Table(rows, source, lines)


def _json(text: str, source: str) -> Table:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # several top-level objects: JSON Lines under a .json name
            return _json_lines(text, source)
        raise DataValidationError(f"{source}, line {exc.lineno}: not valid JSON ({exc.msg}).") from None
    if isinstance(value, dict):  # {"data": [...]}, {"version": ..., "rows": [...]}
        lists = {k: v for k, v in value.items() if isinstance(v, list) and v and isinstance(v[0], dict)}
        if len(lists) != 1:
            raise DataValidationError(f"{source}: a JSON object with keys {list(value)[:8]}; expected a list "
                                      "of rows, or an object holding exactly one list of rows.")
        value = next(iter(lists.values()))
    if not isinstance(value, list) or not all(isinstance(row, dict) for row in value):
        raise DataValidationError(f"{source}: expected a JSON list of objects (one per example).")
    return Table(value, source)


def _delimited(text: str, source: str, delimiter: str, header: list[str] | None) -> Table:
    """CSV/TSV rows with CSV quoting; a TSV that only reads without it is read as plain TSV.

    Two TSV conventions ship: quoted fields (pandas' and Excel's exports) and plain TSV, where
    quotes are text and no field holds a tab or a line break (the UCI SMS Spam Collection, GLUE).
    A message such as `ham<TAB>"Gimme a few" was ...` breaks CSV quoting; when every line of such a
    file splits into the header's number of fields at tabs, that is the reading it was written for.
    """
    try:
        return _quoted(text, source, delimiter, header)
    except DataValidationError:
        plain = _plain_tsv(text, source, header) if delimiter == "\t" else None
        if plain is None:
            raise
        logger.info(f"{source}: read as plain TSV (quotes are text): its fields are not CSV-quoted")
        return plain


def _plain_tsv(text: str, source: str, header: list[str] | None) -> Table | None:
    """One row per line split at tabs, or None when a line has another number of fields."""
    rows, lines = [], []
    for number, line in enumerate(text.split("\n"), 1):
        record = line.rstrip("\r").split("\t")
        if not any(cell.strip() for cell in record):
            continue
        if header is None:
            header = [name.strip() for name in record]
            if len(set(header)) != len(header):
                return None
        elif len(record) != len(header):
            return None
        else:
            rows.append(dict(zip(header, record)))
            lines.append(number)
    return Table(rows, source, lines)


def _quoted(text: str, source: str, delimiter: str, header: list[str] | None) -> Table:
    # strict: a broken quote stops here instead of swallowing the lines after it into one field
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    rows, lines, start = [], [], 1
    try:
        for record in reader:
            if not record or not any(cell.strip() for cell in record):
                start = reader.line_num + 1
                continue
            if header is None:
                header = [name.strip() for name in record]
                if len(set(header)) != len(header):
                    raise DataValidationError(f"{source}, line {start}: the header repeats a column name: {header}.")
            elif len(record) != len(header):
                raise DataValidationError(
                    f"{source}, line {start}: {len(record)} fields, the header has {len(header)} ({header}). "
                    "Quote fields that contain the delimiter or line breaks; set data.csv_header if the file "
                    "has no header row.")
            else:
                rows.append(dict(zip(header, record)))
                lines.append(start)
            start = reader.line_num + 1
    except csv.Error as exc:
        raise DataValidationError(
            f"{source}, line {start}: broken quoting in the row that starts on this line ({exc}, noticed at line "
            f"{reader.line_num}). A field holding the delimiter, a line break or a quote must be quoted, its quotes "
            'doubled ("She said ""hi"""), and every opening quote closed.') from None
    return Table(rows, source, lines)


def _conll(text: str, source: str) -> Table:
    rows, lines, tokens, tags, first = [], [], [], [], 0
    for number, line in enumerate(text.splitlines() + [""], start=1):
        fields = line.split()
        if fields and fields[0] == "-DOCSTART-":
            continue
        if not fields:
            if tokens:
                rows.append({"tokens": tokens, "tags": tags})
                lines.append(first)
            tokens, tags = [], []
            continue
        if len(fields) < 2 or not _TAG.match(fields[-1]):
            raise DataValidationError(
                f"{source}, line {number}: expected a token and its BIO tag (e.g. 'Paris B-LOC'), got "
                f"{line.strip()!r:.80}. CoNLL files hold one token per line with the tag in the last column.")
        first = first if tokens else number
        tokens.append(fields[0])
        tags.append(fields[-1])
    return Table(rows, source, lines, conll=True)


def looks_like_conll(text: str, sample: int = 200) -> bool:
    """True when the first non-empty lines are all ``token ... TAG`` with a BIO-family tag."""
    lines = [ln.split() for ln in text.splitlines()[:sample * 2] if ln.strip()][:sample]
    lines = [fields for fields in lines if fields[0] != "-DOCSTART-"]
    return bool(lines) and all(len(f) >= 2 and _TAG.match(f[-1]) for f in lines)


def _rename_hint(path: Path, text: str) -> str:
    """For a file whose name does not say its format (the UCI spam collection ships as a bare
    `SMSSpamCollection`): the suffix its first line suggests. The format stays the name's to say;
    this only names the fix."""
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    guess = (".jsonl" if first.startswith("{") else ".json" if first.startswith("[") else
             ".tsv" if "\t" in first else ".csv" if "," in first else None)
    if guess is None:
        return ""
    kind = {".jsonl": "JSON Lines", ".json": "JSON", ".tsv": "tab-separated", ".csv": "comma-separated"}[guess]
    hint = f" Its first line looks {kind}: rename it to {path.stem}{guess}"
    if guess in (".tsv", ".csv"):
        hint += " (and set data.csv_header if the file has no header row)"
    return hint + "."


def read_file(path: Path, csv_header: list[str] | None = None) -> Table:
    """Read one data file into a :class:`Table` (format from the suffix, or sniffed for CoNLL)."""
    suffix = path.suffix.lower()
    if path.stat().st_size == 0:
        raise DataValidationError(f"{path}: the file is empty. Add examples or remove the file.")
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return Table(pq.read_table(path).to_pylist(), str(path))
        except Exception as exc:  # pyarrow raises ArrowInvalid, OSError... for a damaged file
            raise DataValidationError(f"{path}: not a readable Parquet file ({exc}).") from None
    text = _text(path)
    if suffix in (".jsonl", ".ndjson"):
        table = _json_lines(text, str(path))
    elif suffix == ".json":
        table = _json(text, str(path))
    elif suffix in (".csv", ".tsv") and not (suffix == ".tsv" and looks_like_conll(text)):
        table = _delimited(text, str(path), "\t" if suffix == ".tsv" else ",", csv_header)
    elif suffix in CONLL_SUFFIXES or suffix == ".tsv" or looks_like_conll(text):
        table = _conll(text, str(path))
    else:
        raise DataValidationError(f"{path}: unsupported file type '{suffix}'. Use JSONL, JSON, CSV, TSV, "
                                  f"Parquet, or a CoNLL/BIO token file.{_rename_hint(path, text)}")
    if not table.rows:
        raise DataValidationError(f"{path}: the file is empty: it holds no examples (only a header or blank lines).")
    return table


def split_of(file_name: str) -> str | None:
    """The split a file name stands for: ``train.csv``, ``dev.jsonl``, ``emerging.test.conll`` ..."""
    stem = Path(file_name).name.lower().split(".")[0] if "." in file_name else file_name.lower()
    if stem in SPLIT_ALIASES:
        return SPLIT_ALIASES[stem]
    parts = {p for p in re.split(r"[._\- ]", Path(file_name).name.lower()) if p}
    found = {SPLIT_ALIASES[p] for p in parts if p in SPLIT_ALIASES}
    return found.pop() if len(found) == 1 else None


def _is_data_file(path: Path) -> bool:
    """A known data suffix, or a split name as suffix (CoNLL-2003's eng.train, eng.testa, eng.testb)."""
    suffix = path.suffix.lower()
    return path.is_file() and not path.name.startswith(".") and (
        suffix in (*TABLE_SUFFIXES, *CONLL_SUFFIXES) or suffix[1:] in SPLIT_ALIASES)


def read_splits(path: str | dict[str, str], csv_header: list[str] | None = None) -> dict[str, Table]:
    """Read a file, a folder of split files, a ``{split: file}`` mapping or a Hub dataset id."""
    if isinstance(path, dict):
        unknown = [k for k in path if k.lower() not in SPLIT_ALIASES]
        if unknown:
            raise DataValidationError(f"data.path: unknown split name(s) {unknown}; use train, validation and test.")
        files = {SPLIT_ALIASES[k.lower()]: Path(v).expanduser() for k, v in path.items()}
        for split, file in files.items():
            if not file.is_file():
                raise DataValidationError(f"data.path.{split}: no file at '{file}'.")
        return {split: read_file(file, csv_header) for split, file in files.items()}
    local = Path(path).expanduser()
    if local.is_file():
        return {"train": read_file(local, csv_header)}
    if local.is_dir():
        candidates = sorted(p for p in local.iterdir() if _is_data_file(p))
        by_split: dict[str, list[Path]] = {}
        for file in candidates:
            if split := split_of(file.name):
                by_split.setdefault(split, []).append(file)
        if not by_split and len(candidates) == 1:
            by_split = {"train": candidates}
        clashes = {s: [p.name for p in ps] for s, ps in by_split.items() if len(ps) > 1}
        if clashes or not by_split:
            problem = (f"several files for one split: {clashes}" if clashes else
                       f"no data file named after a split (train, validation/dev, test); files there: "
                       f"{sorted(p.name for p in local.iterdir())[:20]}")
            raise DataValidationError(f"{local}: {problem}. Name the files train/validation/test, or map them: "
                                      "data.path: {train: a.conll, validation: b.conll, test: c.conll}.")
        return {split: read_file(files[0], csv_header) for split, files in by_split.items()}
    return _read_hub(path)


def _read_hub(name: str) -> dict[str, Table]:
    from datasets import load_dataset

    try:
        hub = load_dataset(name)
    except Exception as exc:  # datasets raises many types for "not found" and "offline"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataValidationError(
            f"'{name}' is not a local file or folder, and loading it from the Hugging Face Hub failed "
            f"({type(exc).__name__}: {first}). Check the path, or use a shipped dataset such as "
            "data/extraction.") from None
    return {SPLIT_ALIASES.get(split, split): Table(ds.to_list(), f"{name} [{split}]") for split, ds in hub.items()}

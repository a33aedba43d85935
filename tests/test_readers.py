"""Reading data files: each format's rows and line numbers, and each refusal's exact message.

The messages are the product here: they name the file, the line and what to do, so they are
compared in full.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tunebook.config import DataConfig
from tunebook.data import DataValidationError, load_and_validate
from tunebook.readers import read_file, read_splits


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def error(call, *args) -> str:
    with pytest.raises(DataValidationError) as info:
        call(*args)
    return str(info.value)


# ---------------------------------------------------------------- JSON and JSON Lines


def test_json_lines_rows_and_lines(tmp_path: Path) -> None:
    path = write(tmp_path, "train.jsonl", '{"a": 1}\n\n  \n{"a": 2}\n')
    table = read_file(path)
    assert table.rows == [{"a": 1}, {"a": 2}] and table.lines == [1, 4] and not table.conll
    assert table.where(1) == f"{path}, line 4" and table.row_id(1) == 4


def test_json_lines_errors(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.jsonl", '{"a": 1}\n{"a": \n')
    assert error(read_file, path) == (f"{path}, line 2: not valid JSON (Expecting value at column 7). Each line must "
                                      "hold one JSON object.")
    path = write(tmp_path, "list.jsonl", '{"a": 1}\n[1, 2]\n')
    assert error(read_file, path) == f"{path}, line 2: expected a JSON object, got [1, 2]."


def test_json_list_object_and_lines_under_a_json_name(tmp_path: Path) -> None:
    listed = read_file(write(tmp_path, "a.json", '[{"a": 1}, {"a": 2}]'))
    assert listed.rows == [{"a": 1}, {"a": 2}] and listed.lines is None and listed.where(0).endswith("a.json, row 1")
    wrapped = read_file(write(tmp_path, "b.json", '{"version": 2, "data": [{"a": 1}], "tags": ["x"], "empty": []}'))
    assert wrapped.rows == [{"a": 1}]
    lines = read_file(write(tmp_path, "c.json", '{"a": 1}\n{"a": 2}\n'))  # JSON Lines saved as .json
    assert lines.rows == [{"a": 1}, {"a": 2}] and lines.lines == [1, 2]


def test_json_errors(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.json", '[{"a": 1},\n {"a": }]')
    assert error(read_file, path) == f"{path}, line 2: not valid JSON (Expecting value)."
    path = write(tmp_path, "two.json", '{"train": [{"a": 1}], "test": [{"a": 2}]}')
    assert error(read_file, path) == (f"{path}: a JSON object with keys ['train', 'test']; expected a list of rows, "
                                      "or an object holding exactly one list of rows.")
    path = write(tmp_path, "many.json", "{" + ", ".join(f'"k{i}": {i}' for i in range(10)) + "}")
    assert f"keys {[f'k{i}' for i in range(8)]};" in error(read_file, path)
    path = write(tmp_path, "scalars.json", "[1, 2]")
    assert error(read_file, path) == f"{path}: expected a JSON list of objects (one per example)."


# ---------------------------------------------------------------- CSV and TSV


def test_csv_rows_lines_blank_lines_and_quoted_line_breaks(tmp_path: Path) -> None:
    path = write(tmp_path, "train.csv", '\ufeff text , label\n\n"two\nlines",a\n,\nplain,b\n')
    table = read_file(path)
    assert table.rows == [{"text": "two\nlines", "label": "a"}, {"text": "plain", "label": "b"}]
    assert table.lines == [3, 6]  # the line each row starts on; blank and empty-cell lines skipped
    tsv = read_file(write(tmp_path, "train.tsv", "text\tlabel\nx, y\tz\n"))
    assert tsv.rows == [{"text": "x, y", "label": "z"}]


def test_csv_header_given_in_the_config(tmp_path: Path) -> None:
    table = read_file(write(tmp_path, "train.csv", "1,hello\n2,bye\n"), ["label", "text"])
    assert table.rows == [{"label": "1", "text": "hello"}, {"label": "2", "text": "bye"}] and table.lines == [1, 2]


def test_plain_tsv_where_quotes_are_text(tmp_path: Path, caplog) -> None:
    # The UCI SMS Spam Collection's own file: no header, no quoting, quotes inside messages.
    text = 'ham\t"Gimme a few" was  &lt;#&gt;  minutes ago\r\nspam\tFree entry, call "now"\r\n\nham\tok "\r\n'
    with caplog.at_level("INFO", logger="tunebook"):
        table = read_file(write(tmp_path, "sms.tsv", text), ["label", "text"])
    assert table.rows == [{"label": "ham", "text": '"Gimme a few" was  &lt;#&gt;  minutes ago'},
                          {"label": "spam", "text": 'Free entry, call "now"'}, {"label": "ham", "text": 'ok "'}]
    assert table.lines == [1, 2, 4]
    assert "read as plain TSV" in caplog.text
    # A quoted TSV (pandas' export) still reads with its quoting: the quotes are not text there.
    quoted = read_file(write(tmp_path, "q.tsv", 'text\tlabel\n"She said ""hi"""\tham\n'))
    assert quoted.rows == [{"text": 'She said "hi"', "label": "ham"}]
    # A file that neither reading fits keeps the quoting error, which names the line.
    broken = write(tmp_path, "b.tsv", 'text\tlabel\n"open\tham\nx\ty\tz\n')
    assert "broken quoting" in error(read_file, broken)
    # CSV has one convention: no fallback there.
    assert "broken quoting" in error(read_file, write(tmp_path, "b.csv", 'text,label\n"a" b,ham\n'))


def test_csv_errors(tmp_path: Path) -> None:
    path = write(tmp_path, "dup.csv", "text,text\na,b\n")
    assert error(read_file, path) == f"{path}, line 1: the header repeats a column name: ['text', 'text']."
    path = write(tmp_path, "short.csv", 'text,label\n"multi\nline",a\nonly one\n')
    assert error(read_file, path) == (
        f"{path}, line 4: 1 fields, the header has 2 (['text', 'label']). Quote fields that contain the "
        "delimiter or line breaks; set data.csv_header if the file has no header row.")


# ---------------------------------------------------------------- files in general


def test_unreadable_files(tmp_path: Path) -> None:
    path = write(tmp_path, "empty.jsonl", "")
    assert error(read_file, path) == f"{path}: the file is empty. Add examples or remove the file."
    path = write(tmp_path, "header.csv", "text,label\n\n")
    assert error(read_file, path) == (f"{path}: the file is empty: it holds no examples (only a header or blank "
                                      "lines).")
    path = write(tmp_path, "latin.csv", "text,label\ncaf\xe9,a\n".encode("latin-1"))
    assert error(read_file, path) == (f"{path}, line 2: byte 0xe9 is not UTF-8 text. Save the file as UTF-8 (e.g. "
                                      "`iconv -f latin1 -t utf-8 latin.csv > fixed_latin.csv`).")
    path = write(tmp_path, "broken.parquet", b"PAR1 not really")
    assert error(read_file, path).startswith(f"{path}: not a readable Parquet file (")
    path = write(tmp_path, "data.xlsx", "x")
    assert error(read_file, path) == (f"{path}: unsupported file type '.xlsx'. Use JSONL, JSON, CSV, TSV, Parquet, "
                                      "or a CoNLL/BIO token file.")
    # A file whose name does not say its format, as the UCI SMS collection ships: the fix is named.
    path = write(tmp_path, "SMSSpamCollection", "ham\tGo until jurong point\nspam\tFree entry\n")
    assert error(read_file, path) == (f"{path}: unsupported file type ''. Use JSONL, JSON, CSV, TSV, Parquet, or a "
                                      "CoNLL/BIO token file. Its first line looks tab-separated: rename it to "
                                      "SMSSpamCollection.tsv (and set data.csv_header if the file has no header row).")
    path = write(tmp_path, "rows.data", '{"text": "a", "label": "b"}\n')
    assert error(read_file, path).endswith("Its first line looks JSON Lines: rename it to rows.jsonl.")


def test_split_mapping(tmp_path: Path) -> None:
    train = write(tmp_path, "a.jsonl", '{"a": 1}\n')
    dev = write(tmp_path, "b.jsonl", '{"a": 2}\n')
    tables = read_splits({"TRAIN": str(train), "dev": str(dev)})
    assert {s: t.rows for s, t in tables.items()} == {"train": [{"a": 1}], "validation": [{"a": 2}]}
    assert error(read_splits, {"train": str(train), "holdout": str(dev)}) == (
        "data.path: unknown split name(s) ['holdout']; use train, validation and test.")
    assert error(read_splits, {"train": str(train), "test": str(tmp_path / "nope.jsonl")}) == (
        f"data.path.test: no file at '{tmp_path / 'nope.jsonl'}'.")


def test_folder_with_two_files_for_one_split(tmp_path: Path) -> None:
    write(tmp_path / "ds", "train.jsonl", '{"a": 1}\n')
    write(tmp_path / "ds", "train.csv", "a\n1\n")
    message = error(read_splits, str(tmp_path / "ds"))
    assert message.startswith(f"{tmp_path / 'ds'}: several files for one split: {{'train': ['train.csv', "
                              "'train.jsonl']}. Name the files train/validation/test, or map them:")


def test_hub_dataset(monkeypatch) -> None:
    import datasets

    def fake_load(name):
        if name != "org/set":
            raise FileNotFoundError(f"Dataset '{name}' doesn't exist on the Hub\nmore detail")
        return datasets.DatasetDict({"train": datasets.Dataset.from_list([{"a": 1}]),
                                     "dev": datasets.Dataset.from_list([{"a": 2}]),
                                     "extra": datasets.Dataset.from_list([{"a": 3}])})

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    tables = read_splits("org/set")
    assert {s: (t.rows, t.source, t.lines) for s, t in tables.items()} == {
        "train": ([{"a": 1}], "org/set [train]", None), "validation": ([{"a": 2}], "org/set [dev]", None),
        "extra": ([{"a": 3}], "org/set [extra]", None)}
    def silent_failure(name):
        raise ConnectionError()

    monkeypatch.setattr(datasets, "load_dataset", silent_failure)
    assert "failed (ConnectionError: ConnectionError)." in error(read_splits, "org/any")
    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    assert error(read_splits, "org/missing") == (
        "'org/missing' is not a local file or folder, and loading it from the Hugging Face Hub failed "
        "(FileNotFoundError: Dataset 'org/missing' doesn't exist on the Hub). Check the path, or use a shipped "
        "dataset such as data/extraction.")


# ---------------------------------------------------------------- chat rows


def chat(tmp_path: Path, rows: list[dict], **config) -> tuple:
    import json

    path = write(tmp_path, "chat/train.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    return path, load_and_validate(DataConfig(path=str(path), recipe="chat", **config))


def test_sharegpt_conversations_become_messages(tmp_path: Path) -> None:
    rows = [{"conversations": [{"from": "System", "value": "Be brief."}, {"from": "HUMAN", "value": f"Q{i}?"},
                               {"from": "gpt", "value": f"A{i}."}]} for i in range(10)]
    _, (data, _) = chat(tmp_path, rows)
    assert data["train"][0]["messages"] == [{"role": "system", "content": "Be brief."},
                                            {"role": "user", "content": f"Q{data['train'][0]['row'] - 1}?"},
                                            {"role": "assistant", "content": f"A{data['train'][0]['row'] - 1}."}]


def test_chat_errors_name_the_row_and_the_fix(tmp_path: Path) -> None:
    fix = ('Each row needs a list of {"role": ..., "content": ...} (or ShareGPT {"from": ..., "value": ...}) '
           "messages ending with an assistant turn.")
    good = {"messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}]}
    bad = {"messages": [{"role": "user", "content": "Q?"}, {"role": "user", "content": "A."}]}
    with pytest.raises(DataValidationError) as info:
        chat(tmp_path, [good, bad])
    path = tmp_path / "chat" / "train.jsonl"
    assert str(info.value) == (f"{path}, line 2, field 'messages': the last message is not a non-empty assistant "
                               f"turn. {fix}")
    with pytest.raises(DataValidationError) as info:
        chat(tmp_path, [good, {"conversations": [{"from": "alien", "value": "hi"}, {"from": "gpt", "value": "A"}]}])
    assert str(info.value) == (f"{path}, line 2, field 'conversations': malformed message {{'role': None, "
                               f"'content': 'hi'}}. {fix}")
    with pytest.raises(DataValidationError, match=r"field 'dialog': expected a non-empty list, got None"):
        chat(tmp_path, [{"dialog": good["messages"]}, {"dialog": None}], columns={"messages": "dialog"})


def test_messages_column_wins_over_conversations(tmp_path: Path) -> None:
    rows = [{"messages": [{"role": "user", "content": f"Q{i}?"}, {"role": "assistant", "content": f"A{i}."}],
             "conversations": "not used"} for i in range(10)]
    _, (data, _) = chat(tmp_path, rows)
    assert data["train"][0]["messages"][1]["content"].startswith("A")


def test_ndjson_is_json_lines(tmp_path: Path) -> None:
    assert read_file(write(tmp_path, "train.NDJSON", '{"a": 1}\n')).rows == [{"a": 1}]

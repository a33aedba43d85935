"""Data stage: loading files and folders, column mapping, validation messages, splitting."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
from datasets import DatasetDict

from tunebook.config import DataConfig
from tunebook.data import DataValidationError, example_key, load_and_validate
from tunebook.readers import read_splits

REPO_ROOT = Path(__file__).resolve().parent.parent


def instruction_rows(n: int, start: int = 0) -> list[dict]:
    return [{"instruction": f"What is {i} plus one?", "input": "", "output": f"It is {i + 1}."}
            for i in range(start, start + n)]


def classification_rows(per_label: int, labels=("World", "Sports", "Business", "Sci/Tech")) -> list[dict]:
    return [{"text": f"{label} story number {i}.", "label": label}
            for i in range(per_label) for label in labels]


def chat_row(question: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def load(path: Path, **kwargs) -> tuple[DatasetDict, dict]:
    return load_and_validate(DataConfig(path=str(path), **kwargs))


def where(source: Path, row: int) -> str:
    """How an error names data row `row` (1-based) of `source`: the line an editor shows, where lines exist."""
    suffix = source.suffix
    return {".jsonl": f"line {row}", ".csv": f"line {row + 1}"}.get(suffix, f"row {row}")


def assert_row_error(exc: pytest.ExceptionInfo, source: Path, row: int, field: str) -> str:
    message = str(exc.value)
    assert f"{source}, {where(source, row)}, field '{field}'" in message, message
    return message


def without_row(rows) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "row"} for r in rows]


def label_names_of(data: DatasetDict, report: dict, split: str) -> list[str]:
    return [report["labels"][i] for i in data[split]["label"]]


# ---------------------------------------------------------------- loading

@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".tsv", ".parquet"])
def test_load_single_file_becomes_train(tmp_data, suffix: str) -> None:
    rows = [{"instruction": f"Q{i}", "input": f"x{i}", "output": f"A{i}"} for i in range(5)]
    path = tmp_data(rows, f"all{suffix}")
    tables = read_splits(str(path))
    assert list(tables) == ["train"]
    assert tables["train"].source == str(path)
    assert tables["train"].rows == rows


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
@pytest.mark.parametrize("val_name", ["validation", "valid", "val", "dev"])
def test_load_folder_split_names(tmp_data, suffix: str, val_name: str) -> None:
    train = tmp_data(instruction_rows(6), f"train{suffix}")
    tmp_data(instruction_rows(2, start=100), f"{val_name}{suffix}")
    tmp_data(instruction_rows(3, start=200), f"test{suffix}")
    tables = read_splits(str(train.parent))
    assert sorted(tables) == ["test", "train", "validation"]
    assert {s: len(t.rows) for s, t in tables.items()} == {"train": 6, "validation": 2, "test": 3}
    assert tables["validation"].source.endswith(f"{val_name}{suffix}")
    assert tables["test"].rows[0]["instruction"] == "What is 200 plus one?"


def test_folder_with_one_unnamed_file_is_train(tmp_data) -> None:
    path = tmp_data(instruction_rows(4), "everything.jsonl")
    tables = read_splits(str(path.parent))
    assert list(tables) == ["train"] and len(tables["train"].rows) == 4


def test_folder_without_data_files_lists_what_is_there(tmp_path: Path) -> None:
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "notes.md").write_text("hi")
    with pytest.raises(DataValidationError, match=r"notes\.md"):
        read_splits(str(folder))


def test_unsupported_file_type(tmp_path: Path) -> None:
    path = tmp_path / "train.xml"
    path.write_text("<rows/>\n")
    with pytest.raises(DataValidationError, match=r"unsupported file type '\.xml'"):
        read_splits(str(path))


def test_text_file_that_is_not_conll(tmp_path: Path) -> None:
    path = tmp_path / "train.txt"
    path.write_text("hello world\n")
    with pytest.raises(DataValidationError, match=r"train\.txt, line 1: expected a token and its BIO tag"):
        read_splits(str(path))


def test_missing_path_is_explained(tmp_path: Path) -> None:
    with pytest.raises(DataValidationError, match="not a local file or folder"):
        read_splits(str(tmp_path / "nothing-here"))


# ---------------------------------------------------------------- column mapping

def test_column_mapping_renames_and_drops(tmp_data) -> None:
    rows = [{"id": i, "sentence": f"Sentence {i}.", "answer": f"Answer {i}", "extra": "x"} for i in range(4)]
    path = tmp_data(rows)
    data, _ = load(path, columns={"input": "sentence", "output": "answer"}, instruction="Say it.",
                   validation_fraction=0.25, test_fraction=0.25)
    assert data["train"].column_names == ["instruction", "input", "output", "row"]
    every = [ex for split in data.values() for ex in split]
    assert sorted(ex["input"] for ex in every) == [f"Sentence {i}." for i in range(4)]


def test_column_role_unknown_to_recipe(tmp_data) -> None:
    path = tmp_data(classification_rows(2))
    with pytest.raises(DataValidationError, match=r"\['output'\].*'classification'.*\['text', 'label'\]"):
        load(path, recipe="classification", columns={"output": "label"})


def test_missing_column_message(tmp_data) -> None:
    path = tmp_data([{"question": "Q", "reply": "A"}])
    with pytest.raises(DataValidationError) as info:
        load(path, instruction="Fixed.")
    message = str(info.value)
    assert str(path) in message
    assert "missing column 'output'" in message
    assert "['question', 'reply']" in message  # the columns that are there
    assert "data.columns.output" in message  # the config key that fixes it


def test_missing_mapped_column_names_the_mapped_name(tmp_data) -> None:
    path = tmp_data([{"sentence": "S", "output": "A"}])
    with pytest.raises(DataValidationError, match=r"missing column 'question' \(role 'instruction'.*"
                                                  r"data\.columns\.instruction"):
        load(path, columns={"instruction": "question"})


def test_missing_instruction_suggests_fixed_instruction(tmp_data) -> None:
    path = tmp_data([{"input": "S", "output": "A"}])
    with pytest.raises(DataValidationError, match=r"missing column 'instruction'.*data\.instruction"):
        load(path)


# ---------------------------------------------------------------- row validation

@pytest.mark.parametrize("suffix, content", [(".jsonl", ""), (".csv", "instruction,output\n")])
def test_empty_file_names_file(tmp_data, suffix: str, content: str) -> None:
    train = tmp_data(instruction_rows(5), f"train{suffix}")
    empty = train.parent / f"test{suffix}"
    empty.write_text(content)
    with pytest.raises(DataValidationError, match=re.escape(str(empty)) + ".*empty"):
        load(train.parent)


@pytest.mark.parametrize("bad", ["", "   ", None])
def test_empty_text(tmp_data, bad) -> None:
    rows = instruction_rows(5)
    rows[2]["output"] = bad
    path = tmp_data(rows)
    with pytest.raises(DataValidationError) as info:
        load(path)
    message = assert_row_error(info, path, 3, "output")
    assert "non-empty text" in message


def test_empty_text_names_users_column(tmp_data) -> None:
    rows = [{"sentence": f"S{i}", "answer": f"A{i}"} for i in range(4)]
    rows[3]["answer"] = ""
    path = tmp_data(rows, "train.csv")
    with pytest.raises(DataValidationError) as info:
        load(path, instruction="Fixed.", columns={"input": "sentence", "output": "answer"})
    assert_row_error(info, path, 4, "answer")


@pytest.mark.parametrize("bad", [5, ["a list"], {"a": "dict"}])
def test_non_string_text(tmp_data, bad) -> None:
    rows = classification_rows(2)
    rows[1]["text"] = bad
    path = tmp_data(rows)
    with pytest.raises(DataValidationError) as info:
        load(path, recipe="classification")
    assert repr(bad) in assert_row_error(info, path, 2, "text")


def test_non_string_input(tmp_data) -> None:
    rows = instruction_rows(3)
    rows[0]["input"] = 42
    path = tmp_data(rows)
    with pytest.raises(DataValidationError) as info:
        load(path)
    assert_row_error(info, path, 1, "input")


def test_instruction_checked_when_no_fixed_instruction(tmp_data) -> None:
    rows = instruction_rows(3)
    rows[1]["instruction"] = " "
    path = tmp_data(rows)
    with pytest.raises(DataValidationError) as info:
        load(path)
    assert_row_error(info, path, 2, "instruction")


def test_label_outside_configured_label_set(tmp_data) -> None:
    rows = classification_rows(3)
    rows[5]["label"] = "Weather"
    path = tmp_data(rows)
    with pytest.raises(DataValidationError) as info:
        load(path, recipe="classification", labels=["World", "Sports", "Business", "Sci/Tech"])
    message = assert_row_error(info, path, 6, "label")
    assert "'Weather'" in message and "data.labels" in message


def test_label_only_in_test_split(tmp_data) -> None:
    train = tmp_data(classification_rows(3, labels=("a", "b")), "train.jsonl")
    test = tmp_data([{"text": "new one", "label": "a"}, {"text": "other one", "label": "c"}], "test.jsonl")
    with pytest.raises(DataValidationError) as info:
        load(train.parent, recipe="classification")
    assert_row_error(info, test, 2, "label")


def test_integer_label_ids_accepted_with_label_names(tmp_data) -> None:
    rows = [{"text": f"t{i}", "label": i % 2} for i in range(10)]
    data, report = load(tmp_data(rows), recipe="classification", labels=["neg", "pos"])
    assert report["labels"] == ["neg", "pos"]
    assert sorted(label for d in data.values() for label in d["label"]) == [0] * 5 + [1] * 5
    rows[3]["label"] = 2
    with pytest.raises(DataValidationError, match="line 4, field 'label'.*If your ids start at 1"):
        load(tmp_data(rows, folder="bad"), recipe="classification", labels=["neg", "pos"])


def test_one_based_integer_labels_from_data(tmp_data) -> None:
    rows = [{"text": f"t{i}", "label": 1 + i % 4} for i in range(20)]
    _, report = load(tmp_data(rows), recipe="classification")
    assert report["labels"] == ["1", "2", "3", "4"]


@pytest.mark.parametrize(
    "messages, problem",
    [
        ("not a list", "expected a non-empty list"),
        ([], "expected a non-empty list"),
        ([{"role": "bot", "content": "hi"}, {"role": "assistant", "content": "yo"}], "malformed message"),
        ([{"role": "user"}, {"role": "assistant", "content": "yo"}], "malformed message"),
        ([{"role": "user", "content": 3}, {"role": "assistant", "content": "yo"}], "malformed message"),
        (["hi", {"role": "assistant", "content": "yo"}], "malformed message"),
        ([{"role": "user", "content": "hi"}], "last message is not a non-empty assistant turn"),
        ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": " "}],
         "last message is not a non-empty assistant turn"),
    ],
)
def test_malformed_chat_messages(tmp_data, messages, problem: str) -> None:
    rows = [chat_row(f"Question {i}?", f"Answer {i}.") for i in range(4)]
    rows[2] = {"messages": messages}
    path = tmp_data(rows)
    with pytest.raises(DataValidationError) as info:
        load(path, recipe="chat")
    message = assert_row_error(info, path, 3, "messages")
    assert problem in message
    assert '{"role": ..., "content": ...}' in message


def test_malformed_chat_names_mapped_column(tmp_data) -> None:
    rows = [{"conversation": chat_row("Q", "A")["messages"]}, {"conversation": []}]
    path = tmp_data(rows)
    with pytest.raises(DataValidationError) as info:
        load(path, recipe="chat", columns={"messages": "conversation"})
    assert_row_error(info, path, 2, "conversation")


def test_good_chat_data_loads(tmp_data) -> None:
    rows = [chat_row(f"Question {i}?", f"Answer {i}.") for i in range(10)]
    rows[0]["messages"].insert(0, {"role": "system", "content": "Be brief."})
    data, report = load(tmp_data(rows), recipe="chat")
    assert sum(report["split_sizes"].values()) == 10
    assert all(ex["messages"][-1]["role"] == "assistant" for split in data.values() for ex in split)


@pytest.mark.parametrize("leak_split", ["validation", "test"])
def test_train_test_leakage(tmp_data, leak_split: str) -> None:
    train = tmp_data(instruction_rows(10), "train.jsonl")
    leaked = instruction_rows(3, start=100) + [instruction_rows(10)[4], instruction_rows(10)[7]]
    other = "test" if leak_split == "validation" else "validation"
    tmp_data(leaked, f"{leak_split}.jsonl")
    tmp_data(instruction_rows(2, start=200), f"{other}.jsonl")
    with pytest.raises(DataValidationError) as info:
        load(train.parent)
    message = str(info.value)
    assert message.startswith(f"2 example(s) of {train.parent / (leak_split + '.jsonl')}")
    assert str(train) in message
    assert "What is 4 plus one?" in message  # the first leaked example


def test_leakage_compares_the_input_side(tmp_data) -> None:
    # Same question with a different answer is still leakage: the model saw the test input.
    train = tmp_data(instruction_rows(5), "train.jsonl")
    tmp_data([{"instruction": "What is 2 plus one?", "input": "", "output": "Three."}], "test.jsonl")
    with pytest.raises(DataValidationError, match="1 example"):
        load(train.parent)


def test_duplicates_warn_with_counts(tmp_data, capsys: pytest.CaptureFixture) -> None:
    rows = instruction_rows(8)
    rows += [rows[1], rows[1], rows[5]]  # 3 extra copies
    path = tmp_data(rows)
    _, report = load(path)
    assert report["duplicates_in_train"] == 3
    out = capsys.readouterr().out
    assert f"3 duplicate example(s) in {path}" in out


def test_no_duplicate_warning_for_clean_data(tmp_data, capsys: pytest.CaptureFixture) -> None:
    _, report = load(tmp_data(instruction_rows(8)))
    assert "duplicates_in_train" not in report
    assert "duplicate" not in capsys.readouterr().out


def test_example_key_uses_the_input_side() -> None:
    assert example_key({"instruction": "Q", "input": "x", "output": "A"}) == "Q\nx"
    assert example_key({"instruction": "Q", "input": None, "output": "A"}) == "Q\n"
    assert example_key({"text": "T", "label": 1}) == "T"
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"},
                {"role": "assistant", "content": "A"}]
    assert example_key({"messages": messages}) == "S\nU"


# ---------------------------------------------------------------- splitting

def _split_rows(data: DatasetDict) -> dict[str, list[str]]:
    return {s: [example_key(ex) for ex in d] for s, d in data.items()}


def test_split_is_deterministic_for_a_seed(tmp_data) -> None:
    path = tmp_data(instruction_rows(50))
    first, _ = load(path, seed=3)
    again, _ = load(path, seed=3)
    other, _ = load(path, seed=4)
    assert _split_rows(first) == _split_rows(again)
    assert _split_rows(first)["test"] != _split_rows(other)["test"]
    assert {s: len(d) for s, d in first.items()} == {"train": 40, "validation": 5, "test": 5}


def test_carved_splits_do_not_overlap_and_cover_everything(tmp_data) -> None:
    path = tmp_data(instruction_rows(40))
    data, report = load(path, validation_fraction=0.2, test_fraction=0.25)
    keys = _split_rows(data)
    assert report["split_sizes"] == {"train": 22, "validation": 8, "test": 10}
    assert not set(keys["train"]) & set(keys["validation"])
    assert not set(keys["train"]) & set(keys["test"])
    assert not set(keys["validation"]) & set(keys["test"])
    assert sorted(sum(keys.values(), [])) == sorted(example_key(r) for r in instruction_rows(40))


def test_stratified_classification_split_keeps_balance(tmp_data) -> None:
    # 30 per label: a 10% split takes exactly 3 of each label.
    labels = ("World", "Sports", "Business", "Sci/Tech")
    path = tmp_data(classification_rows(30, labels))
    for seed in (0, 1, 2):
        data, _ = load(path, recipe="classification", seed=seed)  # noqa: F841 - `_` is the report
        for split, per_label in (("train", 24), ("validation", 3), ("test", 3)):
            assert Counter(label_names_of(data, _, split)) == {label: per_label for label in labels}, (seed, split)


def test_stratified_split_keeps_rare_label_in_test(tmp_data) -> None:
    rows = classification_rows(45, ("common",)) + classification_rows(5, ("rare",))
    path = tmp_data(rows)
    for seed in range(5):
        data, report = load(path, recipe="classification", seed=seed, validation_fraction=0.2,
                            test_fraction=0.2)
        assert Counter(label_names_of(data, report, "test")) == {"common": 9, "rare": 1}


def test_given_splits_are_kept(tmp_data) -> None:
    train = tmp_data(instruction_rows(10), "train.jsonl")
    tmp_data(instruction_rows(3, start=100), "validation.jsonl")
    tmp_data(instruction_rows(4, start=200), "test.jsonl")
    data, _ = load(train.parent, seed=9)
    assert without_row(data["train"]) == instruction_rows(10)  # untouched, in file order
    assert data["train"]["row"] == list(range(1, 11))  # each row's line in its file
    assert without_row(data["validation"]) == instruction_rows(3, start=100)
    assert without_row(data["test"]) == instruction_rows(4, start=200)


def test_only_missing_split_is_carved(tmp_data) -> None:
    train = tmp_data(instruction_rows(20), "train.jsonl")
    tmp_data(instruction_rows(3, start=100), "dev.jsonl")
    data, _ = load(train.parent, test_fraction=0.25)
    assert without_row(data["validation"]) == instruction_rows(3, start=100)
    assert (len(data["train"]), len(data["test"])) == (15, 5)
    assert not set(_split_rows(data)["train"]) & set(_split_rows(data)["test"])


def test_split_without_train_fails(tmp_data) -> None:
    test = tmp_data(instruction_rows(3), "test.jsonl")
    with pytest.raises(DataValidationError, match="No train split"):
        load(test.parent)


def test_carved_splits_keep_duplicates_together(tmp_data) -> None:
    rows = instruction_rows(20)
    rows += rows[:10]  # half the examples appear twice
    data, _ = load(tmp_data(rows), validation_fraction=0.2, test_fraction=0.2)
    keys = _split_rows(data)
    assert not set(keys["train"]) & (set(keys["validation"]) | set(keys["test"]))


def test_max_train_examples(tmp_data) -> None:
    path = tmp_data(instruction_rows(50))
    full, _ = load(path)
    capped, report = load(path, max_train_examples=7)
    assert len(capped["train"]) == 7
    kept = capped["train"]["row"]  # a seeded sample of train, in file order
    assert kept == sorted(kept) and set(kept) <= set(full["train"]["row"]) and kept != full["train"]["row"][:7]
    assert load(path, max_train_examples=7)[0]["train"]["row"] == kept
    # Evaluation splits are not capped.
    assert report["split_sizes"] == {"train": 7, "validation": 5, "test": 5}
    bigger, _ = load(path, max_train_examples=1000)
    assert len(bigger["train"]) == 40


# ---------------------------------------------------------------- shipped datasets

SHIPPED = {
    "extraction": dict(columns={"input": "sentence", "output": "output"},
                       instruction="Extract the named entities from the sentence."),
    "news_topics": dict(recipe="classification"),
    "instructions": dict(recipe="instruction"),
}


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_dataset_loads_and_validates(name: str, capsys: pytest.CaptureFixture) -> None:
    folder = REPO_ROOT / "data" / name
    data, report = load(folder, **SHIPPED[name])
    sizes = report["split_sizes"]
    assert set(sizes) == {"train", "validation", "test"} and min(sizes.values()) > 0
    assert sizes == report["rows"]  # three files given: nothing carved, nothing dropped
    assert not any(key.startswith("duplicates_in_") for key in report)
    assert "duplicate" not in capsys.readouterr().out
    keys = _split_rows(data)  # leakage was checked by validate(); check it independently here
    assert not set(keys["train"]) & (set(keys["validation"]) | set(keys["test"]))
    if name == "news_topics":
        assert report["labels"] == ["Business", "Sci/Tech", "Sports", "World"]
        assert data["train"].column_names == ["text", "label", "row"]
    else:
        assert data["train"].column_names == ["instruction", "input", "output", "row"]


def test_shipped_configs_data_sections_validate() -> None:
    from tunebook.config import load_config

    configs = [p for p in (REPO_ROOT / "configs").glob("**/*.yaml") if "accelerate" not in p.parts]
    checked = 0
    for path in configs:
        config = load_config(path)
        if not isinstance(config.data.path, str) or not (REPO_ROOT / config.data.path).exists():
            continue
        data_config = config.data
        data_config.path = str(REPO_ROOT / data_config.path)
        data, report = load_and_validate(data_config)
        assert min(report["split_sizes"].values()) > 0, path
        checked += 1
    assert checked >= 1


def test_explicit_column_for_optional_role_must_exist(tmp_path) -> None:
    """data.columns.input naming a column that is not there is an error, not a silent no-input run."""
    import json as _json

    from tunebook.config import DataConfig
    from tunebook.data import DataValidationError, load_and_validate

    path = tmp_path / "train.jsonl"
    path.write_text("".join(_json.dumps({"sentence": f"s {i}", "output": f"o {i}"}) + "\n" for i in range(10)))
    config = DataConfig(path=str(path), instruction="Do it.", columns={"input": "text"})
    with pytest.raises(DataValidationError, match=r"missing column 'text'.*data.columns.input"):
        load_and_validate(config)


@pytest.mark.parametrize("total, sizes, expected", [
    (3, [5, 3, 2], [1, 1, 1]),  # shares 1.5, 0.9, 0.6: the two largest remainders get the 2 left over
    (7, [1, 2, 4], [1, 2, 4]),  # exact shares
    (2, [1, 1, 6], [0, 0, 2]),  # shares 0.25, 0.25, 1.5: the 6-row stratum has the largest remainder
    (1, [2, 2], [1, 0]),  # a tie in remainder and size: the first stratum, always
])
def test_apportion_by_largest_remainders(total: int, sizes: list[int], expected: list[int]) -> None:
    from tunebook.data import _apportion

    assert _apportion(total, sizes) == expected and sum(expected) == total


def test_empty_text_message_in_full(tmp_data) -> None:
    rows = instruction_rows(3)
    rows[1]["output"] = "  "
    path = tmp_data(rows)
    with pytest.raises(DataValidationError) as info:
        load(path)
    assert str(info.value) == (f"{path}, line 2, field 'output': expected non-empty text, got '  '. "
                               "Fix or remove the row.")


def test_example_key_without_an_instruction() -> None:
    assert example_key({"input": "x", "output": "y"}) == "\nx"
    assert example_key({"instruction": "q", "output": "y"}) == "q\n"


def test_every_row_leaked_message(tmp_data) -> None:
    rows = instruction_rows(10)
    train = tmp_data(rows, "train.jsonl")
    test = tmp_data(rows[:2], "test.jsonl")
    with pytest.raises(DataValidationError) as info:
        load(train.parent, drop_leaked_rows=True)
    assert str(info.value) == (f"Every row of {test} also appears in {train}: nothing is left to evaluate on. Give "
                               "held-out rows.")


def test_no_train_split_message(tmp_data) -> None:
    test = tmp_data(instruction_rows(3), "test.jsonl")
    with pytest.raises(DataValidationError) as info:
        load_and_validate(DataConfig(path={"test": str(test)}))
    assert str(info.value) == ("No train split found (splits: ['test']). Name a file train.*, or map data.path: "
                               "{train: ...}.")


def test_capped_training_sample_has_no_repeats(tmp_data) -> None:
    data, _ = load(tmp_data(instruction_rows(40)), max_train_examples=30)
    assert len(data["train"]) == 30 and len(set(data["train"]["row"])) == 30

"""CoNLL/BIO token files: tag schemes, detokenizing, answer keys, reading, and the whole data stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunebook.config import DataConfig
from tunebook.data import DataValidationError, load_and_validate
from tunebook.ner import detokenize, entity_spans, entity_types, to_extraction, type_name
from tunebook.readers import looks_like_conll, read_file, read_splits, split_of

# ---------------------------------------------------------------- tag schemes


@pytest.mark.parametrize("tags, spans", [
    # IOB2: every entity starts with B-
    (["B-PER", "I-PER", "O", "B-LOC"], [("PER", 0, 2), ("LOC", 3, 4)]),
    (["B-PER", "B-PER", "I-PER"], [("PER", 0, 1), ("PER", 1, 3)]),
    # IOB1 (CoNLL-2003's files): I- starts an entity; B- only splits two adjacent ones of one type
    (["I-ORG", "I-ORG", "O", "I-LOC"], [("ORG", 0, 2), ("LOC", 3, 4)]),
    (["I-ORG", "B-ORG", "I-ORG"], [("ORG", 0, 1), ("ORG", 1, 3)]),
    (["I-PER", "I-LOC"], [("PER", 0, 1), ("LOC", 1, 2)]),  # a type change starts a new entity
    # BIOES / BILOU: E/L close an entity, S/U are one-token entities
    (["B-PER", "I-PER", "E-PER", "S-LOC", "O"], [("PER", 0, 3), ("LOC", 3, 4)]),
    (["B-ORG", "L-ORG", "U-MISC"], [("ORG", 0, 2), ("MISC", 2, 3)]),
    (["S-PER", "S-PER"], [("PER", 0, 1), ("PER", 1, 2)]),
    # underscores as separators, an entity running to the end, no entities
    (["B_PER", "I_PER"], [("PER", 0, 2)]),
    (["O", "B-DATE"], [("DATE", 1, 2)]),
    (["O", "O"], []),
    ([], []),
])
def test_entity_spans(tags: list[str], spans: list[tuple[str, int, int]]) -> None:
    assert entity_spans(tags) == spans


@pytest.mark.parametrize("tokens, text", [
    (["EU", "rejects", "German", "call", "."], "EU rejects German call."),
    (["He", "said", ",", "\"", "no", "\"", "!"], "He said, \" no \"!"),
    (["(", "Reuters", ")", "It", "'s", "100", "%", "sure"], "(Reuters) It's 100% sure"),
    (["$", "5", "and", "[", "x", "]", "do", "n't"], "$5 and [x] don't"),
    (["Hi"], "Hi"),
    ([], ""),
])
def test_detokenize(tokens: list[str], text: str) -> None:
    assert detokenize(tokens) == text


def test_type_names_and_their_order() -> None:
    assert [type_name(t) for t in ("PER", "org", "LOC", "MISC", "DATE", "Product")] == [
        "person", "organization", "location", "misc", "date", "product"]
    sentences = [{"tags": ["B-ZIP", "B-MISC", "B-PER"]}, {"tags": ["B-DATE", "O", "B-LOC"]}]
    # CoNLL's four in their usual order (those present), then the rest sorted.
    assert entity_types(sentences) == ["person", "location", "misc", "date", "zip"]


def test_to_extraction_keeps_order_and_drops_repeats() -> None:
    sentence = {"tokens": ["Ada", "met", "Ada", "and", "Bob", "in", "New", "York", "."],
                "tags": ["B-PER", "O", "B-PER", "O", "B-PER", "O", "B-LOC", "I-LOC", "O"]}
    example = to_extraction(sentence, ["person", "location", "date"])
    assert example["input"] == "Ada met Ada and Bob in New York."
    assert example["output"] == json.dumps({"person": ["Ada", "Bob"], "location": ["New York"], "date": []})
    assert to_extraction({"tokens": ["Zoë"], "tags": ["B-PER"]}, ["person"])["output"] == '{"person": ["Zoë"]}'


# ---------------------------------------------------------------- reading


CONLL = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC
call NN I-NP O
. . O O

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER
"""


def test_read_conll_file_keeps_sentences_tags_and_lines(tmp_path: Path) -> None:
    path = tmp_path / "train.conll"
    path.write_text(CONLL)
    table = read_file(path)
    assert table.conll and table.lines == [3, 9]  # the line each sentence starts on
    assert table.rows == [
        {"tokens": ["EU", "rejects", "German", "call", "."], "tags": ["B-ORG", "O", "B-MISC", "O", "O"]},
        {"tokens": ["Peter", "Blackburn"], "tags": ["B-PER", "I-PER"]}]


def test_conll_with_a_line_without_a_tag_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "train.bio"
    path.write_text("EU B-ORG\nrejects\n")
    with pytest.raises(DataValidationError, match=r"train.bio, line 2: expected a token and its BIO tag"):
        read_file(path)


def test_conll_is_sniffed_from_tsv_and_txt(tmp_path: Path) -> None:
    assert looks_like_conll("EU\tB-ORG\nrejects\tO\n") and looks_like_conll("-DOCSTART- O\n\nx B-PER\n")
    assert not looks_like_conll("text\tlabel\nhello\tpositive\n") and not looks_like_conll("")
    tsv = tmp_path / "dev.tsv"
    tsv.write_text("EU\tB-ORG\nrejects\tO\n")
    assert read_file(tsv).conll
    table = tmp_path / "test.tsv"
    table.write_text("text\tlabel\nhello\tpositive\n")
    assert not read_file(table).conll and read_file(table).rows == [{"text": "hello", "label": "positive"}]


@pytest.mark.parametrize("name, split", [("train.conll", "train"), ("dev.txt", "validation"),
                                         ("emerging.test.conll", "test"), ("wnut17-valid.bio", "validation"),
                                         ("notes.conll", None), ("train-test.conll", None)])
def test_split_of_file_names(name: str, split: str | None) -> None:
    assert split_of(name) == split


def test_conll_folder_trains_the_extraction_recipe(tmp_path: Path) -> None:
    folder = tmp_path / "ner"
    folder.mkdir()
    (folder / "train.conll").write_text(
        "".join(f"Ada{i} B-PER\nvisited O\nParis{i} B-LOC\n.\tO\n\n" for i in range(8)))
    (folder / "dev.conll").write_text("Bob B-PER\nin O\nRome B-LOC\n")
    (folder / "test.conll").write_text("Acme B-ORG\nhired O\nCy B-PER\n")
    data, report = load_and_validate(DataConfig(path=str(folder), instruction="Extract entities."))
    # The same keys in every split's answers: every type found in any split.
    assert json.loads(data["validation"][0]["output"]) == {"person": ["Bob"], "organization": [], "location": ["Rome"]}
    assert json.loads(data["test"][0]["output"]) == {"person": ["Cy"], "organization": ["Acme"], "location": []}
    assert data["train"][0]["input"] == "Ada0 visited Paris0." and data["train"]["row"][:2] == [1, 6]
    assert report["split_sizes"] == {"train": 8, "validation": 1, "test": 1}
    assert set(read_splits(str(folder))) == {"train", "validation", "test"}


def test_conll_needs_the_instruction_recipe(tmp_path: Path) -> None:
    path = tmp_path / "train.conll"
    path.write_text("Ada B-PER\n")
    with pytest.raises(DataValidationError, match="uses data.recipe: instruction"):
        load_and_validate(DataConfig(path=str(path), recipe="classification"))


def test_mixed_conll_and_table_files_are_refused(tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "train.conll").write_text("Ada B-PER\n")
    (folder / "test.jsonl").write_text('{"instruction": "x", "output": "y"}\n')
    with pytest.raises(DataValidationError, match="Mixed formats"):
        load_and_validate(DataConfig(path=str(folder), instruction="Extract."))


def test_conll_details(tmp_path: Path) -> None:
    """Two-column lines, a tag in the last of many columns, DOCSTART only as a first field, CRLF."""
    path = tmp_path / "train.conll"
    path.write_text("x -DOCSTART- O\nAda B-PER\n\n\n-DOCSTART- -X- O\nBob x y B-PER\r\n")
    table = read_file(path)
    assert table.rows == [{"tokens": ["x", "Ada"], "tags": ["O", "B-PER"]}, {"tokens": ["Bob"], "tags": ["B-PER"]}]
    assert table.lines == [1, 6]
    one_column = tmp_path / "one.conll"
    one_column.write_text("B-PER\n")
    with pytest.raises(DataValidationError, match=r"one.conll, line 1: expected a token and its BIO tag .*'B-PER'"):
        read_file(one_column)
    tag_not_last = tmp_path / "bad.conll"
    tag_not_last.write_text("Ada B-PER x\n")
    with pytest.raises(DataValidationError, match="line 1: expected a token"):
        read_file(tag_not_last)


@pytest.mark.parametrize("tags, spans", [
    (["B-PER", "E-PER", "I-PER"], [("PER", 0, 2), ("PER", 2, 3)]),  # E closes: a following I- starts anew
    (["S-PER", "I-PER"], [("PER", 0, 1), ("PER", 1, 2)]),  # so does S
    (["U-ORG", "I-ORG"], [("ORG", 0, 1), ("ORG", 1, 2)]),
    (["B-LOC", "L-LOC", "I-LOC"], [("LOC", 0, 2), ("LOC", 2, 3)]),
    (["L-ORG"], [("ORG", 0, 1)]),  # an E/L without its B still marks a one-token entity
    (["O", "E-PER"], [("PER", 1, 2)]),
    (["B_PER_NAME", "I_PER_NAME"], [("PER_NAME", 0, 2)]),  # only the first underscore separates
])
def test_entity_spans_closing_tags(tags: list[str], spans: list[tuple[str, int, int]]) -> None:
    assert entity_spans(tags) == spans


def test_conll_sniffing_reads_the_last_column() -> None:
    assert looks_like_conll("EU NNP B-NP B-ORG\nrejects VBZ B-VP O\n")
    assert not looks_like_conll("EU B-ORG NNP\n")


def test_shipped_wikigold_reads_as_published() -> None:
    # The real corpus (IOB1 tags, -DOCSTART- lines) through the extraction recipe: every sentence
    # kept, no sentence in two splits (load_and_validate would stop), CoNLL's four answer keys.
    root = Path(__file__).resolve().parents[1]
    data, report = load_and_validate(DataConfig(path=str(root / "data/wikigold"), instruction="Extract."))
    assert report["split_sizes"] == {"train": 1319, "validation": 207, "test": 170}
    first = data["train"][0]
    assert first["input"] == "010 is the tenth album from Japanese Punk Techno band The Mad Capsule Markets."
    assert json.loads(first["output"]) == {"person": [], "organization": ["The Mad Capsule Markets"],
                                           "location": [], "misc": ["010", "Japanese"]}
    assert first["row"] == 3  # after the -DOCSTART- line and its blank line

#!/usr/bin/env python3
"""Write two shipped datasets again in the layouts real public datasets use, for the worked examples.

    python scripts/make_format_examples.py      # (`make data` runs it after make_datasets.py)

- ``data/extraction_conll/``: the extraction sentences as CoNLL-2003-style token files
  (``train.conll``, ``dev.conll``, ``test.conll``; one token and its BIO tag per line, a blank
  line between sentences, a ``-DOCSTART-`` line first). Pointing ``data.path`` of
  ``configs/smollm2-135m-instruct/lora.yaml`` at the folder trains on exactly the same sentences
  and JSON answers as ``data/extraction``: tunebook turns the tags back into answers.
- ``data/news_topics_csv/``: the news items in AG News' published CSV layout (``train.csv``,
  ``test.csv`` without a header: class index 1-4, title, description; ``classes.txt``).
- ``data/examples/support_tickets.csv``: 300 of the Nimbus support questions as one spreadsheet
  export with its own column names (``ticket_id, customer_question, details, agent_reply``), the
  "your own CSV" of notebook 01: one file, splits carved by tunebook.

Deterministic (same input, same bytes) and standard library only; each file round-trips: the
script checks that reading it back gives the rows it was made from.
"""

from __future__ import annotations

import csv
import io
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TAGS = {"person": "PER", "organization": "ORG", "location": "LOC", "date": "DATE"}
AG_NEWS_CLASSES = ["World", "Sports", "Business", "Sci/Tech"]  # AG News' classes.txt order (ids 1-4)
_TOKEN = re.compile(r"\w+(?:[-'’.&]\w+)*|[^\w\s]")


def tokenize(text: str) -> list[str]:
    """Penn-Treebank-like tokens: words (with inner hyphens/apostrophes/dots) and punctuation apart."""
    return _TOKEN.findall(text)


def bio_tags(tokens: list[str], entities: list[dict]) -> list[str]:
    """IOB2 tags: each entity's tokens are found in the sentence, first unused match wins."""
    tags = ["O"] * len(tokens)
    for entity in entities:
        span = tokenize(entity["text"])
        for start in range(len(tokens) - len(span) + 1):
            if tokens[start:start + len(span)] == span and all(t == "O" for t in tags[start:start + len(span)]):
                kind = TAGS[entity["type"]]
                tags[start:start + len(span)] = [f"B-{kind}"] + [f"I-{kind}"] * (len(span) - 1)
                break
        else:
            raise ValueError(f"entity {entity['text']!r} not found in {tokens}")
    return tags


def write_conll(rows: list[dict], path: Path) -> None:
    lines = ["-DOCSTART- O", ""]
    for row in rows:
        tokens = tokenize(row["sentence"])
        lines += [f"{token} {tag}" for token, tag in zip(tokens, bio_tags(tokens, row["entities"]))] + [""]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_ag_news_csv(rows: list[dict], path: Path) -> None:
    out = io.StringIO(newline="")
    writer = csv.writer(out, quoting=csv.QUOTE_ALL, lineterminator="\n")  # AG News quotes every field
    for row in rows:
        title, _, description = row["text"].partition(". ")
        writer.writerow([AG_NEWS_CLASSES.index(row["label"]) + 1, title, description])
    path.write_text(out.getvalue(), encoding="utf-8")


def write_tickets_csv(rows: list[dict], path: Path) -> None:
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["ticket_id", "customer_question", "details", "agent_reply"])
    for n, row in enumerate(rows, start=1):
        writer.writerow([f"T-{n:04d}", row["instruction"], row["input"], row["output"]])
    path.write_text(out.getvalue(), encoding="utf-8")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def check_round_trip(root: Path) -> None:
    """Reading the new files with tunebook gives back the original sentences/answers and labels."""
    sys.path.insert(0, str(ROOT / "src"))
    from tunebook.config import DataConfig
    from tunebook.data import load_and_validate

    conll, _ = load_and_validate(DataConfig(path=str(root / "extraction_conll"), instruction="x"))
    for split in ("train", "validation", "test"):
        original = read_jsonl(root / "extraction" / f"{split}.jsonl")
        assert [r["input"] for r in conll[split]] == [r["sentence"] for r in original], split
        assert [json.loads(r["output"]) for r in conll[split]] == [json.loads(r["output"]) for r in original], split
    news, report = load_and_validate(DataConfig(
        path=str(root / "news_topics_csv"), recipe="classification", csv_header=["label", "title", "description"],
        columns={"text": ["title", "description"]}, labels=AG_NEWS_CLASSES, first_label_id=1,
        validation_fraction=0.1, test_fraction=0.0))
    original = read_jsonl(root / "news_topics" / "test.jsonl")
    assert [AG_NEWS_CLASSES[i] for i in news["test"]["label"]] == [r["label"] for r in original]
    tickets, _ = load_and_validate(DataConfig(path=str(root / "examples" / "support_tickets.csv"), columns={
        "instruction": "customer_question", "input": "details", "output": "agent_reply"}))
    assert sum(len(split) for split in tickets.values()) == 300


def main() -> int:
    data = ROOT / "data"
    conll = data / "extraction_conll"
    conll.mkdir(exist_ok=True)
    for split, name in (("train", "train"), ("validation", "dev"), ("test", "test")):
        write_conll(read_jsonl(data / "extraction" / f"{split}.jsonl"), conll / f"{name}.conll")
    news = data / "news_topics_csv"
    news.mkdir(exist_ok=True)
    # AG News ships train.csv and test.csv only: validation is carved from train (data.validation_fraction).
    train = read_jsonl(data / "news_topics" / "train.jsonl") + read_jsonl(data / "news_topics" / "validation.jsonl")
    write_ag_news_csv(train, news / "train.csv")
    write_ag_news_csv(read_jsonl(data / "news_topics" / "test.jsonl"), news / "test.csv")
    (news / "classes.txt").write_text("\n".join(AG_NEWS_CLASSES) + "\n", encoding="utf-8")
    (data / "examples").mkdir(exist_ok=True)
    support = read_jsonl(data / "instructions" / "train.jsonl")
    with_details = [r for r in support if r["input"]]  # every row that has an input, then the others
    write_tickets_csv(with_details + [r for r in support if not r["input"]][:300 - len(with_details)],
                      data / "examples" / "support_tickets.csv")
    check_round_trip(data)
    print(f"wrote {conll.relative_to(ROOT)}/, {news.relative_to(ROOT)}/ and data/examples/ (round trip checked)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Every input format x every recipe, end to end: read, train a tiny model 2 steps, evaluate.

Loading alone is not enough: a CSV whose label column stayed text once trained fine until the
collator met it, and evaluation then paired the wrong labels. Each case here writes its data the
way a public dataset ships it, edits only config keys (as a user would), trains and evaluates, and
checks that every test row was scored exactly once, with its row id from the file.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import write_rows

from tunebook.config import RunConfig, apply_overrides
from tunebook.evaluation import run_evaluation
from tunebook.train import run_training

QUESTIONS = [{"instruction": f"What is {i} plus {i}?", "input": "" if i % 2 else f"Show the sum of {i}.",
              "output": f"{i} plus {i} is {2 * i}."} for i in range(40)]
TOPICS = ["World", "Sci/Tech", "Arts and Culture"]  # a slash and spaces in label names
TEXTS = [(f"{TOPICS[i % 3]} story number {i} about" + " things" * (i % 4), i % 3) for i in range(45)]


def chat(question: str, answer: str, style: str) -> list[dict]:
    if style == "sharegpt":
        return [{"from": "system", "value": "Be brief."}, {"from": "human", "value": question},
                {"from": "gpt", "value": answer}]
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def split_files(folder: Path, rows: list[dict], suffix: str, names=("train", "validation", "test")) -> list[dict]:
    """Write 30/5/5 rows as split files; returns the test rows."""
    parts = {names[0]: rows[:30], names[1]: rows[30:35], names[2]: rows[35:40]}
    for name, part in parts.items():
        write_rows(folder / f"{name}{suffix}", part)
    return parts[names[2]]


def write_csv_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))


def conll_sentence(i: int) -> list[str]:
    # IOB1 as in CoNLL-2003's files (an entity starts with I-), then IOB2 (B-) in the dev/test files.
    return ["Ada I-PER", f"Lovelace{i} I-PER", "visited O", f"Paris{i} I-LOC", "with O", "IBM I-ORG", ". O", ""]


def instruction_cases(root: Path) -> dict[str, tuple[dict, int]]:
    """case -> (config overrides, number of test rows)."""
    cases = {}
    for suffix in (".jsonl", ".csv", ".tsv", ".parquet"):
        split_files(root / suffix[1:], QUESTIONS, suffix)
        cases[f"instruction-folder{suffix}"] = ({"data.path": str(root / suffix[1:])}, 5)
    write_rows(root / "alpaca_data.json", QUESTIONS)  # Alpaca: one JSON list, carved splits
    cases["instruction-json-array-carved"] = ({"data.path": str(root / "alpaca_data.json"),
                                               "data.test_fraction": 0.125}, 5)
    (root / "object.json").write_text(json.dumps({"version": 1, "data": QUESTIONS}))
    cases["instruction-json-object"] = ({"data.path": str(root / "object.json"), "data.test_fraction": 0.125}, 5)
    split_files(root / "mapped", QUESTIONS, ".jsonl", names=("qa.train_part", "qa.held_out", "qa.final"))
    cases["instruction-split-mapping"] = ({"data.path": {s: str(root / "mapped" / f"qa.{n}.jsonl") for s, n in
                                                         (("train", "train_part"), ("validation", "held_out"),
                                                          ("test", "final"))}}, 5)
    renamed = [{"question": r["instruction"], "context": r["input"], "answer": r["output"]} for r in QUESTIONS]
    split_files(root / "renamed", renamed, ".csv")
    cases["instruction-renamed-columns"] = ({"data.path": str(root / "renamed"), "data.columns":
                                             {"instruction": "question", "input": "context", "output": "answer"}}, 5)
    conll = root / "conll"
    conll.mkdir()
    (conll / "train.txt").write_text("-DOCSTART- -X- O O\n\n" + "\n".join(
        line for i in range(30) for line in conll_sentence(i)))
    (conll / "valid.txt").write_text("\n".join(line.replace("I-", "B-", 1) if j == 0 else line for i in range(30, 33)
                                               for j, line in enumerate(conll_sentence(i))))
    (conll / "test.txt").write_text("\n".join(line for i in range(33, 37) for line in conll_sentence(i)))
    cases["extraction-conll"] = ({"data.path": str(conll), "data.instruction": "Extract the entities as JSON."}, 4)
    return cases


def chat_cases(root: Path) -> dict[str, tuple[dict, int]]:
    cases = {}
    for style, column in (("openai", "messages"), ("sharegpt", "conversations")):
        rows = [{column: chat(r["instruction"], r["output"], style)} for r in QUESTIONS]
        split_files(root / style, rows, ".jsonl")
        cases[f"chat-{style}"] = ({"data.path": str(root / style), "data.recipe": "chat"}, 5)
    return cases


def classification_cases(root: Path) -> dict[str, tuple[dict, int]]:
    base = {"model.task": "sequence-classification", "data.recipe": "classification"}
    cases = {}
    named = [{"text": t, "label": TOPICS[y]} for t, y in TEXTS]
    for suffix in (".csv", ".parquet", ".jsonl"):  # string labels; CSV was the crashing case
        write_rows(root / f"named{suffix}" / f"train{suffix}", named[:36])
        write_rows(root / f"named{suffix}" / f"test{suffix}", named[36:])
        cases[f"classification-names{suffix}"] = ({**base, "data.path": str(root / f"named{suffix}"),
                                                   "data.labels": TOPICS}, 9)
    zero = [{"sentence": t, "class": y} for t, y in TEXTS]
    write_rows(root / "zero" / "train.jsonl", zero[:36])
    write_rows(root / "zero" / "test.jsonl", zero[36:])
    cases["classification-ids-0-based"] = ({**base, "data.path": str(root / "zero"), "data.labels": TOPICS,
                                            "data.columns": {"text": "sentence", "label": "class"}}, 9)
    # AG News' layout: no header, every field quoted, class ids from 1, title + description.
    agnews = [f'"{y + 1}","{t.split(" about")[0]}","about{t.split(" about")[1]}"' for t, y in TEXTS]
    write_csv_lines(root / "ag_news_csv" / "train.csv", agnews[:36])
    write_csv_lines(root / "ag_news_csv" / "test.csv", agnews[36:])
    cases["classification-ag-news-csv"] = ({**base, "data.path": str(root / "ag_news_csv"), "data.labels": TOPICS,
                                            "data.first_label_id": 1, "data.csv_header": ["label", "title", "body"],
                                            "data.columns": {"text": ["title", "body"]}}, 9)
    # The SMS Spam Collection's layout: one tab-separated file, label first, no header, labels from the data.
    spam = [f"{'spam' if y == 1 else 'ham'}\t{t}" for t, y in TEXTS]
    write_csv_lines(root / "SMSSpamCollection.tsv", spam)
    cases["classification-headerless-tsv-carved"] = ({**base, "data.path": str(root / "SMSSpamCollection.tsv"),
                                                      "data.csv_header": ["label", "text"],
                                                      "data.test_fraction": 0.2}, 9)
    return cases


@pytest.fixture(scope="module")
def all_cases(tmp_path_factory) -> dict[str, tuple[dict, int]]:
    root = tmp_path_factory.mktemp("formats")
    return {**instruction_cases(root), **chat_cases(root), **classification_cases(root)}


CASE_NAMES = ["instruction-folder.jsonl", "instruction-folder.csv", "instruction-folder.tsv",
              "instruction-folder.parquet", "instruction-json-array-carved", "instruction-json-object",
              "instruction-split-mapping", "instruction-renamed-columns", "extraction-conll", "chat-openai",
              "chat-sharegpt", "classification-names.csv", "classification-names.parquet",
              "classification-names.jsonl", "classification-ids-0-based", "classification-ag-news-csv",
              "classification-headerless-tsv-carved"]


def test_case_list_is_complete(all_cases) -> None:
    assert sorted(all_cases) == sorted(CASE_NAMES)


@pytest.mark.parametrize("case", CASE_NAMES)
def test_format_trains_and_evaluates(case, all_cases, tiny_model_dir, tiny_encoder_dir, tmp_path) -> None:
    overrides, test_rows = all_cases[case]
    classification = overrides.get("data.recipe") == "classification"
    config = apply_overrides(RunConfig(), {
        "model.name": str(tiny_encoder_dir if classification else tiny_model_dir),
        "data.seed": 0, "lora.r": 4, "lora.alpha": 8, "lora.dropout": 0.0,
        "train.output_dir": str(tmp_path / "run"), "train.max_steps": 2, "train.per_device_batch_size": 4,
        "train.precision": "fp32", "train.logging_steps": 1, "train.eval_steps": 2, "train.save_steps": 2,
        "train.eval_loss_examples": 4, "eval.max_new_tokens": 4, "eval.batch_size": 4, **overrides})
    torch.manual_seed(0)
    result = run_training(config)
    assert result.metrics["global_step"] == 2 and all(e["loss"] == e["loss"] for e in result.metrics["train_loss"])
    summary = run_evaluation(config)
    assert summary["num_examples"] == summary["split_rows"] == test_rows
    assert summary["tuned"]["num_examples"] == test_rows
    rows = [json.loads(line) for line in (tmp_path / "run" / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == test_rows and len({r["row"] for r in rows}) == test_rows  # each test row once
    assert {"reference", "base_output", "tuned_output"} <= set(rows[0])
    if classification:
        assert summary["task"] == "classification"
        assert {r["reference"] for r in rows} <= set(summary["tuned"]["labels"])
    elif case == "extraction-conll":
        assert summary["task"] == "extraction"
        assert json.loads(rows[0]["reference"]) == {"person": ["Ada Lovelace33"], "organization": ["IBM"],
                                                    "location": ["Paris33"]}
        assert rows[0]["input"] == "Ada Lovelace33 visited Paris33 with IBM."

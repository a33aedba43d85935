"""Baselines: hand-computed scores on tiny data, the same rows as the model, the table and its warning.

The end-to-end tests run `run_evaluation` on tiny random models (a 2-layer BERT classifier, the
2-layer Llama of conftest) so that the row bookkeeping is checked through the real pipeline.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import save_tiny_bert_classifier, write_rows
from datasets import Dataset

from tunebook.baselines import Gazetteer, baseline_warning, best_baseline, majority_class, nearest_answer, run_baselines
from tunebook.config import DataConfig, RunConfig, apply_overrides
from tunebook.evaluation import compare_table, run_evaluation
from tunebook.train import run_training

CLASSIFICATION = DataConfig(recipe="classification")
EXTRACTION = DataConfig(recipe="instruction", instruction="Extract the entities as JSON.")
TEXT = DataConfig(recipe="instruction")


def _ref(person=(), organization=(), location=(), date=()) -> str:
    return json.dumps({"person": list(person), "organization": list(organization), "location": list(location),
                       "date": list(date)})


# ---------------------------------------------------------------- classification

def test_majority_class_scores_the_majority_share() -> None:
    train = Dataset.from_list([{"text": t, "label": y} for t, y in [("a", 1), ("b", 0), ("c", 1), ("d", 1)]])
    evaluated = Dataset.from_list([{"text": t, "label": y} for t, y in [("e", 1), ("f", 0), ("g", 0), ("h", 1),
                                                                          ("i", 1)]])
    majority = run_baselines("classification", train, evaluated, CLASSIFICATION, ["ham", "spam"])["majority"]
    assert majority["predictions"] == [1] * 5
    assert majority["accuracy"] == pytest.approx(3 / 5)
    # Class 1: precision 3/5, recall 1, F1 0.75; class 0 is never predicted: F1 0. Mean: 0.375.
    assert majority["macro_f1"] == pytest.approx(0.375)
    assert (majority["num_examples"], majority["train_examples"]) == (5, 4)
    assert majority["seconds"] >= 0
    assert majority_class([2, 0, 2, 0, 1]) == 0  # a tie goes to the lowest id


def test_tfidf_logreg_learns_words_from_train_only() -> None:
    spam = ["win a free prize now", "free cash prize, call now", "claim your free prize", "urgent prize winner"]
    ham = ["see you at lunch", "running late, see you soon", "lunch at noon?", "call you after work"]
    train = Dataset.from_list([{"text": t, "label": 1} for t in spam] + [{"text": t, "label": 0} for t in ham])
    evaluated = Dataset.from_list([{"text": "free prize for you", "label": 1}, {"text": "see you at noon", "label": 0},
                                   {"text": "zebra", "label": 0}])
    result = run_baselines("classification", train, evaluated, CLASSIFICATION, ["ham", "spam"])["tfidf_logreg"]
    assert result["predictions"][:2] == [1, 0]
    assert result["num_examples"] == 3 and sum(map(sum, result["confusion_matrix"])) == 3


# ---------------------------------------------------------------- extraction

GAZETTEER_TRAIN = [
    _ref(person=["Ada Lovelace"], organization=["Bank of Lisbon"], location=["Lisbon"]),
    _ref(location=["Paris"], date=["May 2020"]),
    _ref(person=["Paris"]),  # once a person, twice a location: "Paris" is labelled a location
    _ref(location=["Paris"]),
    "not JSON: skipped",
]
GAZETTEER_TEST = [
    # "Bank of Lisbon" (longest first) must hide the "Lisbon" inside it.
    ("Ada Lovelace joined the Bank of Lisbon.", _ref(person=["Ada Lovelace"], organization=["Bank of Lisbon"])),
    # Whole words only: "Parisian" contains "Paris" but is not it.
    ("Parisian cafés reopened in May 2020.", _ref(date=["May 2020"])),
    # "Grace Hopper" was never seen in training: missed.
    ("Grace Hopper flew from Lisbon to Paris.", _ref(person=["Grace Hopper"], location=["Lisbon", "Paris"])),
]


def test_gazetteer_finds_training_entities_longest_first_on_word_boundaries() -> None:
    gazetteer = Gazetteer(GAZETTEER_TRAIN)
    assert gazetteer.find(GAZETTEER_TEST[0][0]) == {"person": ["Ada Lovelace"], "organization": ["Bank of Lisbon"],
                                                    "location": [], "date": []}
    assert gazetteer.find(GAZETTEER_TEST[1][0])["location"] == []
    assert gazetteer.find(GAZETTEER_TEST[2][0]) == {"person": [], "organization": [], "location": ["Lisbon", "Paris"],
                                                    "date": []}
    assert gazetteer.find("Lovelace was in paris.") == {t: [] for t in ("person", "organization", "location", "date")}


def test_gazetteer_scores_with_entity_f1() -> None:
    train = Dataset.from_list([{"input": f"s{i}", "output": answer} for i, answer in enumerate(GAZETTEER_TRAIN)])
    evaluated = Dataset.from_list([{"input": s, "output": answer} for s, answer in GAZETTEER_TEST])
    result = run_baselines("extraction", train, evaluated, EXTRACTION)["gazetteer"]
    # 5 of 6 gold entities found, nothing invented: P = 1, R = 5/6, F1 = 10/11.
    assert (result["precision"], result["recall"], result["f1"]) == pytest.approx((1.0, 5 / 6, 10 / 11))
    assert result["exact_match"] == pytest.approx(2 / 3) and result["valid_json_rate"] == 1.0
    assert result["per_type"]["person"]["recall"] == pytest.approx(1 / 2)
    assert json.loads(result["predictions"][1]) == json.loads(_ref(date=["May 2020"]))


# ---------------------------------------------------------------- free text

def test_copy_input_and_nearest_answer() -> None:
    train = Dataset.from_list([
        {"instruction": "Which batteries does the sensor take?", "input": "", "output": "Two AA lithium batteries."},
        {"instruction": "How high should I mount the sensor?", "input": "", "output": "1.5 to 2 metres up."},
    ])
    evaluated = Dataset.from_list([
        {"instruction": "Repeat.", "input": "Hello there.", "output": "hello there"},  # copy: exact match
        {"instruction": "What batteries go in the sensor?", "input": "", "output": "Two AA lithium batteries."},
        {"instruction": "Say yes", "input": "", "output": "Say yes!"},  # no input: copies the instruction
    ])
    results = run_baselines("text", train, evaluated, TEXT)
    assert results["copy_input"]["predictions"] == ["Hello there.", "What batteries go in the sensor?", "Say yes"]
    assert results["copy_input"]["exact_match"] == pytest.approx(2 / 3)
    assert results["nearest_answer"]["predictions"][1] == "Two AA lithium batteries."
    assert nearest_answer(["mount the sensor high", "batteries"], ["high", "AA"], ["how high to mount it"]) == ["high"]
    assert all(r["num_examples"] == 3 and r["train_examples"] == 2 for r in results.values())


# ---------------------------------------------------------------- best baseline, warning, table

BASELINES = {"majority": {"accuracy": 0.87, "macro_f1": 0.47, "num_examples": 517},
             "tfidf_logreg": {"accuracy": 0.987, "macro_f1": 0.968, "num_examples": 517}}


def test_best_baseline_is_chosen_by_the_headline_metric() -> None:
    assert best_baseline(BASELINES, "classification") == "tfidf_logreg"  # lower accuracy would not matter
    text = {"copy_input": {"token_f1": 0.2, "exact_match": 0.5}, "nearest_answer": {"token_f1": 0.6, "exact_match": 0}}
    assert best_baseline(text, "text") == "nearest_answer"


def test_warning_when_tuned_does_not_beat_the_best_baseline() -> None:
    lost = baseline_warning({"accuracy": 0.975, "macro_f1": 0.947}, BASELINES, "classification")
    assert lost is not None and "'tfidf_logreg'" in lost
    assert "macro_f1 0.9470 vs 0.9680" in lost and "accuracy 0.9750 vs 0.9870" in lost
    # Better macro-F1 but worse accuracy still loses on one headline metric; a tie does not beat.
    assert "accuracy" in baseline_warning({"accuracy": 0.98, "macro_f1": 0.97}, BASELINES, "classification")
    assert baseline_warning({"accuracy": 0.987, "macro_f1": 0.99}, BASELINES, "classification") is not None
    assert baseline_warning({"accuracy": 0.99, "macro_f1": 0.97}, BASELINES, "classification") is None
    assert baseline_warning({"f1": 0.95}, {"gazetteer": {"f1": 0.4, "num_examples": 150}}, "extraction") is None
    assert baseline_warning({"f1": 0.3}, {}, "extraction") is None


def test_table_has_a_column_per_baseline_and_marks_the_best() -> None:
    lines = compare_table({"accuracy": 0.5, "macro_f1": 0.4}, {"accuracy": 0.975, "macro_f1": 0.947},
                          ["accuracy", "macro_f1"], BASELINES, "tfidf_logreg").splitlines()
    assert lines[0].split() == ["metric", "base", "tuned", "delta", "majority", "tfidf_logreg", "(best)"]
    assert lines[2].split() == ["accuracy", "0.5000", "0.9750", "+0.4750", "0.8700", "0.9870"]
    assert lines[3].split()[-2:] == ["0.4700", "0.9680"]


# ---------------------------------------------------------------- through run_evaluation

@pytest.fixture(scope="module")
def tiny_classifier_dir(tmp_path_factory) -> Path:
    """A tiny random BERT classifier (2 labels) with the MiniLM tokenizer, saved to a folder."""
    return save_tiny_bert_classifier(tmp_path_factory.mktemp("models") / "tiny-bert", num_labels=2)


def _config(model_dir: Path, data: Path, output_dir: Path, **overrides) -> RunConfig:
    values = {"model.name": str(model_dir), "data.path": str(data), "lora.r": 4, "lora.alpha": 8,
              "train.output_dir": str(output_dir), "train.max_steps": 2, "train.per_device_batch_size": 4,
              "train.learning_rate": 1e-3, "train.precision": "fp32", "train.save_steps": 2,
              "train.eval_loss_examples": 0, "eval.batch_size": 4, **overrides}
    return apply_overrides(RunConfig(), values)


def _predictions(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


def test_classification_baselines_score_the_models_rows(tiny_classifier_dir, tmp_path, capsys) -> None:
    def row(i: int, spam: bool) -> dict:
        text = f"{'free prize now' if spam else 'see you at lunch'} number {i}"
        return {"text": text, "label": "ham spam".split()[spam]}

    folder = tmp_path / "sms"
    write_rows(folder / "train.jsonl", [row(i, i % 4 == 0) for i in range(32)])
    write_rows(folder / "validation.jsonl", [row(i, i % 4 == 0) for i in range(32, 36)])
    write_rows(folder / "test.jsonl", [row(i, spam) for i, spam in zip(range(36, 41), [1, 0, 0, 0, 1])])
    config = _config(tiny_classifier_dir, folder, tmp_path / "run", **{
        "model.task": "sequence-classification", "data.recipe": "classification", "data.labels": ["ham", "spam"],
        "data.max_train_examples": 25, "eval.max_examples": 3})
    run_training(config)
    summary = run_evaluation(config)
    # 32 train rows sampled down to 25; the model scores the first 3 of the 5 test rows.
    assert summary["num_examples"] == summary["tuned"]["num_examples"] == summary["base"]["num_examples"] == 3
    for result in summary["baselines"].values():
        assert (result["num_examples"], result["train_examples"]) == (3, 25)
    assert summary["baselines"]["majority"]["accuracy"] == pytest.approx(2 / 3)  # ham, on spam, ham, ham
    assert summary["best_baseline"] == "tfidf_logreg" and summary["baselines"]["tfidf_logreg"]["accuracy"] == 1.0
    predictions = _predictions(tmp_path / "run" / "eval")
    assert len(predictions) == 3
    assert [p["baseline_output"] for p in predictions] == [p["reference"] for p in predictions]
    output = capsys.readouterr().out
    assert "tfidf_logreg (best)" in output
    # Whether the 2-step tiny model loses is up to chance; the summary and the log must agree either way.
    assert summary["tuned_beats_baseline"] is (summary["baseline_warning"] is None)
    assert ("warning: the tuned model does not beat" in output) is (not summary["tuned_beats_baseline"])


def test_generation_baselines_learn_from_the_rows_that_were_trained(tiny_model_dir, tmp_path, capsys) -> None:
    """Over-long training rows are dropped before training; the gazetteer must not learn from them either."""
    places = ["Lisbon", "Paris", "Kyoto", "Lagos", "Boston", "Osaka"]
    rows = [{"input": f"We met in {place} on day {i}.", "output": _ref(location=[place])}
            for i, place in enumerate(places * 4)]
    rows[0]["input"] += " It was a very long and windy day, with far more words than any other sentence here." * 3
    folder = tmp_path / "extraction"
    for split, part in (("train", rows[:16]), ("validation", rows[16:18]), ("test", rows[18:])):
        write_rows(folder / f"{split}.jsonl", part)
    # The long row has 127 tokens, the others 70: max_length 100 drops it from training.
    config = _config(tiny_model_dir, folder, tmp_path / "run", **{
        "data.instruction": "Extract the entities as JSON.", "data.max_length": 100,
        "eval.max_examples": 4, "eval.max_new_tokens": 4})
    summary = run_evaluation(config)  # no adapter: the base model and the baseline
    assert summary["task"] == "extraction" and summary["base"]["num_examples"] == 4
    gazetteer = summary["baselines"]["gazetteer"]
    # 16 train rows, of which the long one was dropped; 4 of the 6 test rows scored.
    assert (gazetteer["num_examples"], gazetteer["train_examples"]) == (4, 15)
    assert summary["tuned_beats_baseline"] is None and summary["baseline_warning"] is None
    assert gazetteer["f1"] == 1.0  # every test place also occurs in training
    assert all(json.loads(p["baseline_output"]) == json.loads(p["reference"])
               for p in _predictions(tmp_path / "run" / "eval"))
    assert "gazetteer (best)" in capsys.readouterr().out

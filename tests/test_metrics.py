"""Tests for tunebook's offline `evaluate` metrics, against numbers worked out by hand.

Most of the runtime is `import evaluate` itself (it imports transformers pipelines).
"""

from __future__ import annotations

import json
import socket

import pytest

from tunebook.metrics import METRICS_DIR, available_metrics, load_metric
from tunebook.metrics.entity_f1 import categorize_errors, parse_entities
from tunebook.metrics.text_overlap import lcs_length, rouge_l, token_f1


def _ref(person=(), organization=(), location=(), date=()) -> str:
    """Canonical reference JSON with the four standard keys."""
    return json.dumps({"person": list(person), "organization": list(organization),
                       "location": list(location), "date": list(date)})


# ---------------------------------------------------------------- loading

def test_available_and_unknown_metric() -> None:
    assert available_metrics() == ["classification", "entity_f1", "text_overlap"]
    with pytest.raises(ValueError, match="classification, entity_f1, text_overlap"):
        load_metric("accuracy")
    with pytest.raises(ValueError):
        load_metric("../metrics/classification")  # only known stems, never arbitrary paths


def test_load_works_offline_and_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_network(*args, **kwargs):
        raise AssertionError("metric loading tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    for name in available_metrics():
        first, second = load_metric(name), load_metric(name)  # second hits evaluate's cache
        assert type(first).__name__ == type(second).__name__
    assert (METRICS_DIR / "entity_f1.py").is_file()


# ---------------------------------------------------------------- classification

# refs  = [0,0,0, 1,1, 2,2,2]
# preds = [0,0,1, 1,2, 2,2,0]
# confusion (rows true, cols pred): true0 -> [2,1,0], true1 -> [0,1,1], true2 -> [1,0,2]
# accuracy = diagonal / n = (2+1+2)/8 = 0.625
# F1_c = 2TP / (2TP + FP + FN):
#   class0: TP=2, FP=1 (col0 sum 3 - 2), FN=1 -> 4/6 = 2/3
#   class1: TP=1, FP=1 (col1 sum 2 - 1), FN=1 -> 2/4 = 1/2
#   class2: TP=2, FP=1 (col2 sum 3 - 2), FN=1 -> 4/6 = 2/3
# macro F1 = (2/3 + 1/2 + 2/3) / 3 = (11/6) / 3 = 11/18
REFS = [0, 0, 0, 1, 1, 2, 2, 2]
PREDS = [0, 0, 1, 1, 2, 2, 2, 0]


def test_classification_by_hand_and_sklearn() -> None:
    result = load_metric("classification").compute(predictions=PREDS, references=REFS)
    assert set(result) == {"accuracy", "macro_f1", "per_class_f1", "confusion_matrix"}
    assert result["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [1, 0, 2]]
    assert result["accuracy"] == pytest.approx(5 / 8)
    assert result["per_class_f1"] == pytest.approx([2 / 3, 1 / 2, 2 / 3])
    assert result["macro_f1"] == pytest.approx(11 / 18)

    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    assert result["accuracy"] == pytest.approx(sklearn_metrics.accuracy_score(REFS, PREDS))
    assert result["macro_f1"] == pytest.approx(sklearn_metrics.f1_score(REFS, PREDS, average="macro"))
    assert result["confusion_matrix"] == sklearn_metrics.confusion_matrix(REFS, PREDS).tolist()


def test_classification_num_labels_absent_class() -> None:
    # Class 3 occurs nowhere: its F1 is reported as 0.0 but it is left out of the macro
    # average (as sklearn's default labels=None does), so macro stays 11/18.
    result = load_metric("classification").compute(predictions=PREDS, references=REFS, num_labels=4)
    assert result["per_class_f1"] == pytest.approx([2 / 3, 1 / 2, 2 / 3, 0.0])
    assert result["macro_f1"] == pytest.approx(11 / 18)
    assert len(result["confusion_matrix"]) == 4 and result["confusion_matrix"][3] == [0, 0, 0, 0]


# ---------------------------------------------------------------- entity F1

ENTITY_REFS = [
    _ref(["Ada Lovelace"], [], ["Paris"], ["3 March 2021"]),
    _ref(["Alan Turing"], ["Bletchley Park"]),
    _ref(["Marie Curie"], [], ["Warsaw"]),
    _ref([], ["UNESCO"], [], ["1945"]),
]
ENTITY_PREDS = [
    # wrong type: Paris as organization. TP: Ada, 3 March 2021. FP: org/Paris. FN: loc/Paris.
    "```json\n" + _ref(["Ada Lovelace"], ["Paris"], [], ["3 March 2021"]) + "\n```",
    # invented Grace Hopper (FP), missing Bletchley Park (FN), TP: Alan Turing.
    "Sure! Here you go: " + _ref(["Alan Turing", "Grace Hopper"]) + " Hope this helps.",
    # truncated generation -> invalid JSON -> both gold entities are FN.
    '{"person": ["Marie Curie"], "location": ["Warsaw"',
    # exact after .strip() and dedup. TP: UNESCO, 1945.
    _ref([], [" UNESCO ", "UNESCO"], [], ["1945"]),
]
# Totals: TP = 2+1+0+2 = 5, FP = 1+1+0+0 = 2, FN = 1+1+2+0 = 4
# P = 5/7, R = 5/9, F1 = 2TP/(2TP+FP+FN) = 10/16 = 0.625
# valid_json_rate = 3/4, exact_match = 1/4 (only example 4)
# per type:  person TP=2 (Ada, Alan) FP=1 (Grace) FN=1 (Marie) -> P=R=F1=2/3, support 3
#            organization TP=1 FP=1 FN=1 -> 1/2 each, support 2
#            location TP=0 FP=0 FN=2 -> no predictions -> 0.0 each, support 2
#            date TP=2 -> 1.0 each, support 2


def test_entity_f1_by_hand() -> None:
    result = load_metric("entity_f1").compute(predictions=ENTITY_PREDS, references=ENTITY_REFS)
    assert set(result) == {"precision", "recall", "f1", "valid_json_rate", "per_type", "exact_match"}
    assert result["precision"] == pytest.approx(5 / 7)
    assert result["recall"] == pytest.approx(5 / 9)
    assert result["f1"] == pytest.approx(0.625)
    assert result["valid_json_rate"] == pytest.approx(0.75)
    assert result["exact_match"] == pytest.approx(0.25)
    per_type = result["per_type"]
    assert per_type["person"] == pytest.approx({"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "support": 3})
    assert per_type["organization"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    assert per_type["location"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}
    assert per_type["date"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 2}


def test_entity_f1_zero_denominators() -> None:
    metric = load_metric("entity_f1")
    empty = metric.compute(predictions=[_ref()], references=[_ref()])  # nothing anywhere
    assert (empty["precision"], empty["recall"], empty["f1"], empty["exact_match"]) == (1.0, 1.0, 1.0, 1.0)
    # Predictions but no gold: precision 0/1, recall has an empty denominator -> 0.0.
    invented = metric.compute(predictions=[_ref(["Bob"])], references=[_ref()])
    assert (invented["precision"], invented["recall"], invented["f1"]) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="reference at index 0"):
        metric.compute(predictions=[_ref()], references=["not json"])


def test_parse_entities() -> None:
    assert parse_entities('```json\n{"person": [" Ada ", "Ada", ""]}\n```') == {"person": {"Ada"}}
    assert parse_entities('Answer: {"location": ["A}b {c"]} trailing') == {"location": {"A}b {c"}}
    assert parse_entities('{"person": "Ada"}') is None  # value not a list
    assert parse_entities('{"person": [1]}') is None  # list item not a string
    assert parse_entities("no json here") is None
    assert parse_entities('{"person": ["Ada"]') is None  # never balanced


def test_categorize_errors() -> None:
    ref = _ref(["Ada Lovelace"], [], ["Paris"])
    assert categorize_errors(ref, ref) == []
    assert categorize_errors("I could not find any.", ref) == ["invalid_json"]
    assert categorize_errors(_ref(["Ada Lovelace"]), ref) == ["missing_entity"]
    # Paris under organization is a type error; the gold location it explains is not
    # reported again as missing.
    assert categorize_errors(_ref(["Ada Lovelace"], ["Paris"]), ref) == ["wrong_type"]
    assert categorize_errors(_ref(["Lovelace"], [], ["Paris"]), ref) == ["boundary"]
    assert categorize_errors(_ref(["Ada Lovelace", "Bob"], [], ["Paris"]), ref) == ["invented_entity"]
    assert categorize_errors(_ref(["Bob"], [], ["Paris"]), ref) == ["missing_entity", "invented_entity"]


# ---------------------------------------------------------------- text overlap

def test_lcs_and_rouge_l_by_hand() -> None:
    # Classic textbook pair: LCS of ABCBDAB and BDCABA has length 4 (e.g. B C B A).
    assert lcs_length(list("ABCBDAB"), list("BDCABA")) == 4
    # pred: the cat sat on the mat        (6 tokens)
    # ref:  The cat was sitting on the mat (7 tokens)
    # LCS = the cat on the mat = 5 -> P = 5/6, R = 5/7
    # F = 2PR/(P+R) = (50/42) / (65/42) = 10/13
    assert rouge_l("the cat sat on the mat", "The cat was sitting on the mat") == pytest.approx(10 / 13)
    assert rouge_l("", "") == 1.0 and rouge_l("a", "") == 0.0


def test_text_overlap_metric() -> None:
    # Pair 1: exact after normalisation ("  Paris. " -> "paris"); token F1 1; rouge-L 1.
    # Pair 2: "Paris, France" vs "in Paris": tokens {paris, france} vs {in, paris},
    #         1 common -> P = R = 1/2 -> token F1 0.5; LCS("paris france","in paris") = 1 -> 0.5.
    assert token_f1("Paris, France", "in Paris") == pytest.approx(0.5)
    result = load_metric("text_overlap").compute(
        predictions=["  Paris. ", "Paris, France"], references=["paris", "in Paris"]
    )
    assert set(result) == {"exact_match", "token_f1", "rouge_l"}
    assert result["exact_match"] == pytest.approx(0.5)  # (1 + 0) / 2
    assert result["token_f1"] == pytest.approx(0.75)  # (1 + 0.5) / 2
    assert result["rouge_l"] == pytest.approx(0.75)  # (1 + 0.5) / 2


# ---------------------------------------------------------------- the plain functions behind the metrics
# evaluate.load runs a copy of each metric file; the same figures must come from the plain functions
# (which tunebook and these tests import directly), and their argument checks must hold.


def test_classification_scores_plain_function() -> None:
    from tunebook.metrics.classification import classification_scores

    assert classification_scores(PREDS, REFS) == load_metric("classification").compute(
        predictions=PREDS, references=REFS)
    result = classification_scores(PREDS, REFS, num_labels=4)
    assert result["confusion_matrix"] == [[2, 1, 0, 0], [0, 1, 1, 0], [1, 0, 2, 0], [0, 0, 0, 0]]
    assert result["per_class_f1"] == pytest.approx([2 / 3, 1 / 2, 2 / 3, 0.0])
    assert result["macro_f1"] == pytest.approx(11 / 18) and result["accuracy"] == 5 / 8
    # A class that only the predictions use counts in the macro average (it is a real error).
    only_predicted = classification_scores([0, 2], [0, 0], num_labels=3)
    assert only_predicted["macro_f1"] == pytest.approx((2 / 3 + 0.0) / 2)
    assert only_predicted["per_class_f1"] == pytest.approx([2 / 3, 0.0, 0.0])


@pytest.mark.parametrize("predictions, references, num_labels, message", [
    ([0, 1], [0], None, "1-D and of equal length"),
    ([[0]], [[0]], None, "1-D and of equal length"),
    ([], [], None, "at least one example"),
    ([0, -1], [0, 0], None, r"labels must lie in 0\.\.0"),
    ([0, 3], [0, 0], 3, r"labels must lie in 0\.\.2"),
    ([0, 0], [3, 0], 3, r"labels must lie in 0\.\.2"),
])
def test_classification_scores_argument_checks(predictions, references, num_labels, message) -> None:
    from tunebook.metrics.classification import classification_scores

    with pytest.raises(ValueError, match=message):
        classification_scores(predictions, references, num_labels)


def test_entity_scores_plain_function() -> None:
    from tunebook.metrics.entity_f1 import entity_scores

    result = entity_scores(ENTITY_PREDS, ENTITY_REFS)
    assert result == load_metric("entity_f1").compute(predictions=ENTITY_PREDS, references=ENTITY_REFS)
    assert (result["precision"], result["recall"], result["f1"]) == pytest.approx((5 / 7, 5 / 9, 0.625))
    assert (result["valid_json_rate"], result["exact_match"]) == (0.75, 0.25)
    assert list(result["per_type"]) == ["date", "location", "organization", "person"]  # sorted
    assert result["per_type"]["person"]["support"] == 3 and result["per_type"]["location"]["support"] == 2
    # A type only the predictions use gets a row: its false positives count.
    invented = entity_scores([_ref(["Ada"])[:-1] + ', "ship": ["Beagle"]}'], [_ref(["Ada"])])
    assert invented["per_type"]["ship"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert invented["precision"] == 0.5 and invented["recall"] == 1.0
    with pytest.raises(ValueError, match="same length"):
        entity_scores([_ref()], [_ref(), _ref()])
    with pytest.raises(ValueError, match="at least one example"):
        entity_scores([], [])


@pytest.mark.parametrize("tp, fp, fn, expected", [
    (0, 0, 0, (1.0, 1.0, 1.0)),
    (0, 2, 0, (0.0, 0.0, 0.0)),
    (0, 0, 3, (0.0, 0.0, 0.0)),
    (3, 1, 2, (3 / 4, 3 / 5, 2 * (3 / 4) * (3 / 5) / (3 / 4 + 3 / 5))),
    (2, 0, 0, (1.0, 1.0, 1.0)),
])
def test_precision_recall_f1_rules(tp: int, fp: int, fn: int, expected: tuple) -> None:
    from tunebook.metrics.entity_f1 import _prf

    result = _prf(tp, fp, fn)
    assert (result["precision"], result["recall"], result["f1"]) == pytest.approx(expected)


def test_overlap_scores_plain_function() -> None:
    from tunebook.metrics.text_overlap import normalize_answer, overlap_scores

    assert normalize_answer("  Paris. ") == "paris" and normalize_answer("A, b!") == "a, b"
    result = overlap_scores(["  Paris. ", "Paris, France"], ["paris", "in Paris"])
    assert result == {"exact_match": 0.5, "token_f1": 0.75, "rouge_l": 0.75}
    assert token_f1("", "") == 1.0 and token_f1("a", "") == 0.0 and token_f1("x y", "z") == 0.0
    assert rouge_l("x y", "z") == 0.0
    with pytest.raises(ValueError, match="same length"):
        overlap_scores(["a"], [])
    with pytest.raises(ValueError, match="at least one example"):
        overlap_scores([], [])


@pytest.mark.parametrize("a, b, n", [
    ("ABCBDAB", "BDCABA", 4), ("AB", "BA", 1), ("XAB", "ABX", 2), ("ABC", "ABC", 3), ("", "ABC", 0), ("A", "", 0),
    ("AXBXC", "ABC", 3), ("BA", "AB", 1),
])
def test_lcs_length_cases(a: str, b: str, n: int) -> None:
    assert lcs_length(list(a), list(b)) == n == lcs_length(list(b), list(a))


def test_rouge_l_and_token_f1_with_one_shared_token() -> None:
    assert rouge_l("a b", "a c") == 0.5 and rouge_l("a b c d", "d") == pytest.approx(2 * 0.25 / 1.25)
    assert token_f1("a b", "a c") == 0.5 and token_f1("a a b", "a") == pytest.approx(2 * (1 / 3) / (4 / 3))
    assert token_f1("Paris", "paris!") == 1.0 and token_f1("", "x") == 0.0


def test_overlapping_texts_make_boundary_errors() -> None:
    gold = _ref(["Ada Lovelace"], ["Bank of Lisbon"])
    assert categorize_errors(_ref(["Ada"], ["Bank of Lisbon"]), gold) == ["boundary"]  # contained
    assert categorize_errors(_ref(["Countess Ada Lovelace"], ["Bank of Lisbon"]), gold) == ["boundary"]  # contains
    assert categorize_errors(_ref(["Ada Byron"], ["Bank of Lisbon"]), gold) == ["boundary"]  # shares a word
    assert categorize_errors(_ref(["Grace"], ["Bank of Lisbon"]), gold) == ["missing_entity", "invented_entity"]


def test_one_error_explains_its_gold_entity_only() -> None:
    gold = _ref(["Ada", "Paris"], ["Acme"], ["Rome"])
    # Rome and Ada predicted as organizations: wrong types, each explaining only its own gold entity, so
    # gold Paris, predicted nowhere, is still reported missing.
    prediction = _ref([], ["Acme", "Rome", "Ada"], [])
    assert categorize_errors(prediction, gold) == ["missing_entity", "wrong_type"]
    near = _ref(["Ada L", "Paris"], ["Acme Corp"], ["Rome"])
    assert categorize_errors(near, _ref(["Ada", "Paris"], ["Acme"], ["Rome", "Oslo"])) == ["missing_entity", "boundary"]


def test_bad_reference_message() -> None:
    from tunebook.metrics.entity_f1 import _parse_reference

    with pytest.raises(ValueError) as info:
        _parse_reference("[1]")
    assert str(info.value) == "reference is not a JSON dict of lists of strings: '[1]'"
    with pytest.raises(ValueError) as info:
        _parse_reference("nope", 3)
    assert str(info.value) == "reference at index 3 is not a JSON dict of lists of strings: 'nope'"


def test_a_substring_that_is_no_word_is_still_a_boundary_error() -> None:
    assert categorize_errors(_ref(["Ada"]), _ref(["Adam Smith"])) == ["boundary"]
    assert categorize_errors(_ref(["Adam Smith"]), _ref(["Ada"])) == ["boundary"]


def test_empty_overlap_scores_message() -> None:
    from tunebook.metrics.text_overlap import overlap_scores

    with pytest.raises(ValueError) as info:
        overlap_scores([], [])
    assert str(info.value) == "text_overlap needs at least one example"


@pytest.mark.parametrize("module, cls, predictions, references", [
    ("classification", "Classification", [0, 1, 1], [0, 1, 0]),
    ("entity_f1", "EntityF1", ['{"person": ["Ada"]}'], ['{"person": ["Ada", "Bob"]}']),
    ("text_overlap", "TextOverlap", ["Paris."], ["paris"]),
])
def test_metric_classes_compute_their_plain_functions(module, cls, predictions, references) -> None:
    """The evaluate.Metric classes, built directly: their features and what compute() returns."""
    import importlib

    mod = importlib.import_module(f"tunebook.metrics.{module}")
    metric = getattr(mod, cls)()
    plain = {"classification": "classification_scores", "entity_f1": "entity_scores",
             "text_overlap": "overlap_scores"}[module]
    expected = getattr(mod, plain)(predictions, references)
    assert metric.compute(predictions=predictions, references=references) == expected
    info = metric._info()
    assert set(info.features) == {"predictions", "references"}
    assert info.description == mod._DESCRIPTION and info.inputs_description == mod._KWARGS_DESCRIPTION
    dtype = "int64" if module == "classification" else "string"
    assert info.features["predictions"].dtype == info.features["references"].dtype == dtype


def test_two_boundary_errors_each_explain_their_gold_entity() -> None:
    assert categorize_errors(_ref(["Ada", "Bob"]), _ref(["Ada Lovelace", "Bob Smith"])) == ["boundary"]
    assert categorize_errors(_ref([], ["Paris", "Rome"]), _ref([], [], ["Paris", "Rome"])) == ["wrong_type"]


def test_classification_scores_read_numeric_text_and_say_what_is_wrong() -> None:
    from tunebook.metrics.classification import classification_scores

    assert classification_scores([1, 0], ["1", "0"])["accuracy"] == 1.0  # ids read back from text files
    with pytest.raises(ValueError) as info:
        classification_scores([0], [0, 1])
    assert str(info.value) == "predictions and references must be 1-D and of equal length"


def test_bad_reference_is_named_by_its_index() -> None:
    from tunebook.metrics.entity_f1 import entity_scores

    with pytest.raises(ValueError, match=r"^reference at index 1 is not a JSON dict"):
        entity_scores([_ref(), _ref()], [_ref(), "[]"])

"""Entity-extraction F1 for generated JSON, plus plain helpers for error analysis.

The model is asked to answer with JSON such as
``{"person": ["Ada Lovelace"], "organization": [], "location": ["Paris"], "date": []}``.
Generated text is messy (code fences, chatter around the object), so predictions are
parsed leniently; references must be valid JSON of the same shape.

This file is used two ways and therefore has no relative imports:
- `evaluate.load(<path to this file>)` copies it into evaluate's module cache and runs it;
- `from tunebook.metrics.entity_f1 import parse_entities, categorize_errors` imports it
  as a normal module (the helpers need neither `evaluate.load` nor a Metric instance).
"""

from __future__ import annotations

import json
import re
from typing import Any

import datasets
import evaluate

ERROR_CATEGORIES: tuple[str, ...] = (
    "invalid_json", "missing_entity", "wrong_type", "invented_entity", "boundary",
)

_FENCE = re.compile(r"^```[A-Za-z]*\s*\n?(.*?)\n?```\s*$", re.DOTALL)


def _first_json_object(text: str) -> object | None:
    """The JSON value that starts at the first ``{`` of `text`; None if it does not parse there."""
    start = text.find("{")
    if start == -1:
        return None
    try:
        return json.JSONDecoder().raw_decode(text, start)[0]  # ignores whatever follows the object
    except json.JSONDecodeError:
        return None  # not JSON, or cut off before the closing brace (generation ran out of tokens)


def parse_entities(text: str) -> dict[str, set[str]] | None:
    """Parse generated text into ``{type: {entity text, ...}}``, or None if invalid.

    Lenient about packaging: strips whitespace and a ```` ```json ```` fence, then takes the
    ``{...}`` object that starts at the first brace, so chatter before/after the JSON is tolerated. Strict
    about content: the object must be a dict of lists of strings, otherwise None. Entity
    texts are ``.strip()``-ed, empty ones dropped, duplicates merged (sets). Type keys are
    kept exactly as written.
    """
    text = text.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    obj = _first_json_object(text)
    if not isinstance(obj, dict):
        return None
    parsed: dict[str, set[str]] = {}
    for key, values in obj.items():
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            return None
        parsed[key] = {v.strip() for v in values if v.strip()}
    return parsed


def _pairs(entities: dict[str, set[str]]) -> set[tuple[str, str]]:
    """Flatten ``{type: texts}`` into a set of ``(type, text)`` entities."""
    return {(etype, text) for etype, texts in entities.items() for text in texts}


def _parse_reference(reference: str, index: int | None = None) -> dict[str, set[str]]:
    """References are our own data, so a bad one is a bug: raise instead of scoring it."""
    gold = parse_entities(reference)
    if gold is None:
        where = "" if index is None else f" at index {index}"
        raise ValueError(f"reference{where} is not a JSON dict of lists of strings: {reference!r}")
    return gold


def _overlaps(a: str, b: str) -> bool:
    """True if one text contains the other or they share a word (case-insensitive)."""
    a, b = a.lower(), b.lower()
    return a in b or b in a or bool(set(a.split()) & set(b.split()))


def categorize_errors(prediction: str, reference: str) -> list[str]:
    """Classify what went wrong in one example; an empty list means fully correct.

    Categories (returned once each, in `ERROR_CATEGORIES` order):
    - ``invalid_json``: the prediction does not parse (reported alone: nothing else is
      comparable).
    - ``wrong_type``: a predicted text is a gold text, but under a different type.
    - ``boundary``: a predicted text overlaps (contains, is contained in, or shares a word
      with) a gold text of the same type without being equal, e.g. "Lovelace" for
      "Ada Lovelace".
    - ``invented_entity``: any other predicted entity that is not in the gold.
    - ``missing_entity``: a gold entity that is not predicted and not already explained
      by a wrong_type or boundary prediction (so one mistake is not counted twice).
    """
    gold = _pairs(_parse_reference(reference))
    parsed = parse_entities(prediction)
    if parsed is None:
        return ["invalid_json"]
    pred = _pairs(parsed)
    found: set[str] = set()
    explained: set[tuple[str, str]] = set()  # gold entities accounted for by another error
    for etype, text in pred - gold:
        other_type = {(t, x) for t, x in gold if x == text and t != etype}
        near = {(t, x) for t, x in gold if t == etype and x != text and _overlaps(text, x)}
        if other_type:
            found.add("wrong_type")
            explained |= other_type
        elif near:
            found.add("boundary")
            explained |= near
        else:
            found.add("invented_entity")
    if (gold - pred) - explained:
        found.add("missing_entity")
    return [c for c in ERROR_CATEGORIES if c in found]


def _prf(tp: int, fp: int, fn: int) -> dict[str, float]:
    """Precision/recall/F1 with explicit zero-denominator rules.

    No gold and no predictions at all (tp = fp = fn = 0): nothing was missed or invented,
    so P = R = F1 = 1.0. Otherwise an empty denominator gives 0.0 (no predictions →
    precision 0.0; no gold → recall 0.0). Invalid JSON with empty gold is therefore not
    visible here; it shows up in `valid_json_rate` and `exact_match`.
    """
    if tp + fp + fn == 0:
        return {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def entity_scores(predictions: list[str], references: list[str]) -> dict[str, Any]:
    """Compute the metric's result dict; plain function so it is usable without `evaluate`."""
    if len(predictions) != len(references):
        raise ValueError("predictions and references must have the same length")
    if not references:
        raise ValueError("entity_f1 needs at least one example")
    counts: dict[str, list[int]] = {}  # type -> [tp, fp, fn]
    valid = exact = 0
    for i, (prediction, reference) in enumerate(zip(predictions, references)):
        gold_by_type = _parse_reference(reference, i)
        for etype in gold_by_type:  # every reference key gets a per_type entry
            counts.setdefault(etype, [0, 0, 0])
        parsed = parse_entities(prediction)
        gold = _pairs(gold_by_type)
        pred: set[tuple[str, str]] = set()
        if parsed is not None:  # invalid → pred stays empty → all gold are false negatives
            valid += 1
            pred = _pairs(parsed)
            exact += pred == gold
        for etype, _ in pred & gold:
            counts[etype][0] += 1
        for etype, _ in pred - gold:  # includes types the references never use
            counts.setdefault(etype, [0, 0, 0])[1] += 1
        for etype, _ in gold - pred:
            counts[etype][2] += 1
    tp, fp, fn = (sum(c[k] for c in counts.values()) for k in range(3))
    per_type = {
        etype: {**_prf(*c), "support": c[0] + c[2]}  # support = number of gold entities
        for etype, c in sorted(counts.items())
    }
    return {
        **_prf(tp, fp, fn),
        "valid_json_rate": valid / len(references),
        "exact_match": exact / len(references),
        "per_type": per_type,
    }


_DESCRIPTION = """\
Micro precision/recall/F1 over (type, text) entities extracted as JSON by a generative
model, with per-type scores, the rate of parseable outputs, and per-example exact match.
"""

_KWARGS_DESCRIPTION = """\
Args:
    predictions (list of str): raw generated text; parsed with `parse_entities`.
    references (list of str): canonical JSON, e.g. '{"person": ["Ada"], "date": []}'.
Returns:
    precision, recall, f1 (float): micro-averaged over all entities. 1.0 when there are no
        gold and no predicted entities at all; otherwise a zero denominator gives 0.0.
    valid_json_rate (float): fraction of predictions that parse.
    exact_match (float): fraction of examples whose entity set equals the gold set
        (an invalid prediction never matches).
    per_type (dict): {type: {"precision", "recall", "f1", "support"}}.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class EntityF1(evaluate.Metric):
    """`evaluate.Metric` wrapper around `entity_scores` (see module docstring)."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions: list[str], references: list[str]) -> dict[str, Any]:
        return entity_scores(predictions, references)

"""Text-overlap metrics for free-form generation: exact match, token F1, ROUGE-L.

Dependency-free on purpose (no `rouge_score`, no nltk): the longest common subsequence is
a few lines of dynamic programming, and fewer imports means `evaluate.load` by path works
on any machine that has tunebook installed.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Any

import datasets
import evaluate

_WHITESPACE = re.compile(r"\s+")
_WORD = re.compile(r"\w+")
_PUNCT_TABLE = str.maketrans({c: " " for c in string.punctuation})


def normalize_answer(text: str) -> str:
    """Lowercase, strip, collapse whitespace and drop trailing punctuation ("Paris." == "paris")."""
    text = _WHITESPACE.sub(" ", text.lower()).strip()
    return text.rstrip(string.punctuation + " ")


def _tokens(text: str) -> list[str]:
    """Bag-of-words tokens for token F1: lowercase, punctuation → space, split on whitespace."""
    return text.lower().translate(_PUNCT_TABLE).split()


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD-style F1 over the multiset of tokens shared by prediction and reference.

    Unlike SQuAD we do not drop English articles (tunebook is not English-only). Both
    empty → 1.0, exactly one empty → 0.0 (the SQuAD convention).
    """
    pred, ref = _tokens(prediction), _tokens(reference)
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())  # min count per shared token
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence; O(len(a)*len(b)) time, O(len(b)) memory."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            # Extend the diagonal on a match, else carry the best of left/up.
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure (beta = 1) over lowercase word tokens (``\\w+``).

    P = LCS / len(prediction), R = LCS / len(reference), F = 2PR / (P + R).
    Same empty-input convention as `token_f1`.
    """
    pred, ref = _WORD.findall(prediction.lower()), _WORD.findall(reference.lower())
    if not pred or not ref:
        return float(pred == ref)
    lcs = lcs_length(pred, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def overlap_scores(predictions: list[str], references: list[str]) -> dict[str, Any]:
    """Compute the metric's result dict (each score averaged over examples)."""
    if len(predictions) != len(references):
        raise ValueError("predictions and references must have the same length")
    if not references:
        raise ValueError("text_overlap needs at least one example")
    n = len(references)
    pairs = list(zip(predictions, references))
    return {
        "exact_match": sum(normalize_answer(p) == normalize_answer(r) for p, r in pairs) / n,
        "token_f1": sum(token_f1(p, r) for p, r in pairs) / n,
        "rouge_l": sum(rouge_l(p, r) for p, r in pairs) / n,
    }


_DESCRIPTION = """\
Normalised exact match, SQuAD-style token F1 and ROUGE-L (LCS F-measure), each averaged
over examples. For short answers and summaries produced by a generative model.
"""

_KWARGS_DESCRIPTION = """\
Args:
    predictions (list of str): generated texts.
    references (list of str): one reference text per prediction.
Returns:
    exact_match (float): equal after lowercasing, stripping, collapsing whitespace and
        dropping trailing punctuation.
    token_f1 (float): bag-of-tokens F1 (punctuation removed).
    rouge_l (float): LCS-based F-measure over lowercase word tokens.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class TextOverlap(evaluate.Metric):
    """`evaluate.Metric` wrapper around `overlap_scores` (see module docstring)."""

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
        return overlap_scores(predictions, references)

"""Classification metric for integer labels: accuracy, macro-F1, per-class F1, confusion matrix.

Loaded by path through `tunebook.metrics.load_metric("classification")` so it works offline.
The numbers are scikit-learn's (pinned in requirements.txt): accuracy_score, f1_score and
confusion_matrix over the fixed label ids 0..num_labels-1.
"""

from __future__ import annotations

from typing import Any

import datasets
import evaluate
import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

_DESCRIPTION = """\
Accuracy, macro-averaged F1, per-class F1 and the confusion matrix for single-label
classification with integer class ids 0..num_labels-1.
"""

_KWARGS_DESCRIPTION = """\
Args:
    predictions (list of int): predicted class ids.
    references (list of int): true class ids.
    num_labels (int, optional): number of classes. Defaults to max label seen + 1.
        Fixes the length of `per_class_f1` and the shape of `confusion_matrix`.
Returns:
    accuracy (float): fraction of predictions equal to the reference.
    macro_f1 (float): unweighted mean of the per-class F1 over the classes that occur in
        the references or the predictions (as scikit-learn's `f1_score(average="macro")`
        does by default); a class that never occurs says nothing about the model.
    per_class_f1 (list of float): F1 of each class id 0..num_labels-1 (0.0 for classes
        that occur nowhere).
    confusion_matrix (list of list of int): rows = true class, columns = predicted class.
Examples:
    >>> m = load_metric("classification")
    >>> m.compute(predictions=[0, 1, 1], references=[0, 1, 0])["accuracy"]
    0.6666666666666666
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Classification(evaluate.Metric):
    """`evaluate.Metric` for integer-label classification (see module docstring)."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(
        self,
        predictions: list[int],
        references: list[int],
        num_labels: int | None = None,
    ) -> dict[str, Any]:
        return classification_scores(predictions, references, num_labels)


def classification_scores(
    predictions: list[int], references: list[int], num_labels: int | None = None
) -> dict[str, Any]:
    """Compute the metric's result dict; plain function so it is testable without `evaluate`."""
    preds = np.asarray(predictions, dtype=np.int64)
    refs = np.asarray(references, dtype=np.int64)
    if preds.shape != refs.shape or preds.ndim != 1:
        raise ValueError("predictions and references must be 1-D and of equal length")
    if preds.size == 0:
        raise ValueError("classification metric needs at least one example")
    if num_labels is None:
        num_labels = int(max(preds.max(), refs.max())) + 1
    if min(preds.min(), refs.min()) < 0 or max(preds.max(), refs.max()) >= num_labels:
        raise ValueError(f"labels must lie in 0..{num_labels - 1}")

    classes = list(range(num_labels))
    # macro-F1 over the classes that occur in references or predictions (scikit-learn's default
    # when `labels` is not given); per-class F1 for every id, 0.0 where a class occurs nowhere.
    present = sorted(set(refs.tolist()) | set(preds.tolist()))
    return {
        "accuracy": float(accuracy_score(refs, preds)),
        "macro_f1": float(f1_score(refs, preds, labels=present, average="macro", zero_division=0)),
        "per_class_f1": [float(x) for x in f1_score(refs, preds, labels=classes, average=None, zero_division=0)],
        "confusion_matrix": confusion_matrix(refs, preds, labels=classes).tolist(),
    }

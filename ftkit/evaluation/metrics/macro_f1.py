"""Macro-averaged F1 with per-class scores and a confusion matrix (local evaluate module).

Macro F1 weights every class equally, which is what matters for imbalanced
classification fine-tunes where a model can score high accuracy by ignoring a
minority class.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import evaluate
import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from ._text import SKLEARN_CITATION, check_lengths, label_features, metric_info

_DESCRIPTION = """Unweighted mean of per-class F1 over string labels (scikit-learn,
zero_division=0), plus per-class precision/recall/F1/support and the confusion
matrix. All scores are in 0..1."""

_INPUTS = """
Args:
    predictions (list[str]): predicted labels.
    references (list[str]): gold labels.
    labels (list[str], optional): the label set and its order. Defaults to the
        sorted union of labels seen in references and predictions. A label
        listed here but never predicted (or never present) still counts in the
        macro average with F1 = 0. Every reference must be in `labels`; a
        prediction outside `labels` (e.g. a malformed generation) counts as a
        miss for its reference's class but has no column in the matrix.
Returns:
    {"macro_f1": float,
     "per_class": {label: {"precision", "recall", "f1", "support"}},
     "confusion_matrix": list[list[int]]  # rows = reference label, cols = predicted label
     "labels": list[str]}                 # order of the matrix rows/cols
"""


def _label_order(predictions: Sequence[str], references: Sequence[str], labels: Sequence[str] | None) -> list[str]:
    """Resolve and validate the label order shared by all outputs."""
    if labels is None:
        return sorted(set(references) | set(predictions))
    order = list(labels)
    if not order or len(set(order)) != len(order):
        raise ValueError(f"`labels` must be non-empty and without duplicates, got {order}")
    unknown = sorted(set(references) - set(order))
    if unknown:
        raise ValueError(f"references contain labels not in `labels`: {unknown}")
    return order


class MacroF1(evaluate.Metric):
    """Macro F1 + per-class report + confusion matrix."""

    def _info(self) -> evaluate.MetricInfo:
        url = "https://scikit-learn.org/stable/modules/generated/sklearn.metrics.precision_recall_fscore_support.html"
        return metric_info(_DESCRIPTION, SKLEARN_CITATION, _INPUTS, label_features(), reference_urls=[url])

    def _compute(
        self,
        predictions: list[str],
        references: list[str],
        labels: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        check_lengths(predictions, references)
        order = _label_order(predictions, references, labels)
        precision, recall, f1, support = precision_recall_fscore_support(
            references, predictions, labels=order, average=None, zero_division=0
        )
        matrix = confusion_matrix(references, predictions, labels=order)
        per_class = {
            label: {
                "precision": float(p),
                "recall": float(r),
                "f1": float(f),
                "support": int(s),
            }
            for label, p, r, f, s in zip(order, precision, recall, f1, support)
        }
        return {
            # sklearn's average="macro" is exactly this unweighted mean over `order`.
            "macro_f1": float(np.mean(f1)),
            "per_class": per_class,
            "confusion_matrix": matrix.tolist(),
            "labels": order,
        }

"""Accuracy over string class labels, as a local (offline) evaluate module."""

from __future__ import annotations

from collections.abc import Sequence

import evaluate
from sklearn.metrics import accuracy_score

from ._text import SKLEARN_CITATION, check_lengths, label_features, metric_info

_DESCRIPTION = """Fraction of examples whose predicted label equals the reference label
(exact string match; normalise labels before calling if needed). Range 0..1."""

_INPUTS = """
Args:
    predictions (list[str]): predicted labels.
    references (list[str]): gold labels.
Returns:
    {"accuracy": float in 0..1}
"""


def example_scores(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """Per-example correctness (1.0/0.0); its mean is the accuracy. Used for bootstrap/McNemar."""
    check_lengths(predictions, references)
    return [float(p == r) for p, r in zip(predictions, references)]


class Accuracy(evaluate.Metric):
    """Exact-match accuracy over string labels."""

    def _info(self) -> evaluate.MetricInfo:
        url = "https://scikit-learn.org/stable/modules/generated/sklearn.metrics.accuracy_score.html"
        return metric_info(_DESCRIPTION, SKLEARN_CITATION, _INPUTS, label_features(), reference_urls=[url])

    def _compute(self, predictions: list[str], references: list[str]) -> dict[str, float]:
        check_lengths(predictions, references)
        return {"accuracy": float(accuracy_score(references, predictions))}

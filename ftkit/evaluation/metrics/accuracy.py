"""Accuracy over string class labels, as a local (offline) evaluate module."""

from __future__ import annotations

from collections.abc import Sequence

import datasets
import evaluate
from sklearn.metrics import accuracy_score

from ._text import check_lengths

_DESCRIPTION = """Fraction of examples whose predicted label equals the reference label
(exact string match; normalise labels before calling if needed). Range 0..1."""

_CITATION = """@article{scikit-learn, title={Scikit-learn: Machine Learning in {P}ython},
author={Pedregosa, F. and others}, journal={JMLR}, volume={12}, pages={2825--2830}, year={2011}}"""

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
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_INPUTS,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
            reference_urls=["https://scikit-learn.org/stable/modules/generated/sklearn.metrics.accuracy_score.html"],
        )

    def _compute(self, predictions: list[str], references: list[str]) -> dict[str, float]:
        check_lengths(predictions, references)
        return {"accuracy": float(accuracy_score(references, predictions))}

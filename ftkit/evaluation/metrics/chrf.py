"""chrF (character n-gram F-score) via sacrebleu (local evaluate module).

chrF is robust to tokenisation and morphology, so it suits multilingual
generation; sacrebleu is the reference implementation.
"""

from __future__ import annotations

from collections.abc import Sequence

import evaluate
from sacrebleu.metrics import CHRF

from ._text import References, as_reference_lists, check_lengths, text_features

_DESCRIPTION = """Corpus-level chrF from sacrebleu's CHRF (statistics summed over the
corpus, then one F-score), on sacrebleu's 0..100 scale. With word_order=2 it
is chrF++. Several references per example are supported (sacrebleu keeps the
best-matching one per segment). Note corpus chrF is NOT the mean of
sentence-level chrF."""

_CITATION = """@inproceedings{popovic-2015-chrf, title={chr{F}: character n-gram {F}-score for
automatic {MT} evaluation}, author={Popovi{\\'c}, Maja}, booktitle={WMT}, year={2015}}
@inproceedings{post-2018-call, title={A Call for Clarity in Reporting {BLEU} Scores},
author={Post, Matt}, booktitle={WMT}, year={2018}}"""

_INPUTS = """
Args:
    predictions (list[str]): generated texts.
    references (list[list[str]] or list[str]): one or more references per example.
    char_order (int, default 6), word_order (int, default 0), beta (int, default 2):
        passed to sacrebleu.metrics.CHRF.
Returns:
    {"chrf": float in 0..100}
"""


def _reference_streams(references: Sequence[References]) -> list[list[str | None]]:
    """Transpose per-example reference lists into sacrebleu's reference streams;
    sacrebleu skips ``None``, which allows a different number of references per example."""
    per_example = as_reference_lists(references)
    width = max(len(refs) for refs in per_example)
    return [[refs[j] if j < len(refs) else None for refs in per_example] for j in range(width)]


def _chrf(char_order: int, word_order: int, beta: int) -> CHRF:
    return CHRF(char_order=char_order, word_order=word_order, beta=beta)


def corpus_score(
    predictions: Sequence[str],
    references: Sequence[References],
    char_order: int = 6,
    word_order: int = 0,
    beta: int = 2,
) -> float:
    """Corpus chrF (0..100); also usable as a bootstrap statistic."""
    check_lengths(predictions, references)
    metric = _chrf(char_order, word_order, beta)
    return float(metric.corpus_score(list(predictions), _reference_streams(references)).score)


def example_scores(
    predictions: Sequence[str],
    references: Sequence[References],
    char_order: int = 6,
    word_order: int = 0,
    beta: int = 2,
) -> list[float]:
    """Sentence-level chrF (0..100) per example."""
    check_lengths(predictions, references)
    metric = _chrf(char_order, word_order, beta)
    return [
        float(metric.sentence_score(pred, refs).score)
        for pred, refs in zip(predictions, as_reference_lists(references))
    ]


class Chrf(evaluate.Metric):
    """Corpus chrF / chrF++ from sacrebleu, 0..100."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_INPUTS,
            features=text_features(),
            codebase_urls=["https://github.com/mjpost/sacrebleu"],
        )

    def _compute(
        self,
        predictions: list[str],
        references: list[References],
        char_order: int = 6,
        word_order: int = 0,
        beta: int = 2,
    ) -> dict[str, float]:
        return {"chrf": corpus_score(predictions, references, char_order, word_order, beta)}

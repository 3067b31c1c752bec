"""chrF (character n-gram F-score) via sacrebleu (local evaluate module).

chrF is robust to tokenisation and morphology, so it suits multilingual
generation; sacrebleu is the reference implementation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict, Unpack

import evaluate
import numpy as np
from sacrebleu.metrics import CHRF

from ._text import References, as_reference_lists, check_lengths, metric_info, text_features

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


class ChrfOptions(TypedDict, total=False):
    """sacrebleu CHRF settings, given by keyword: char_order (default 6), word_order (default 0;
    2 gives chrF++) and beta (default 2)."""

    char_order: int
    word_order: int
    beta: int


def _chrf(predictions: Sequence[str], references: Sequence[References], options: ChrfOptions) -> CHRF:
    """The scorer, once the inputs are known to be aligned and non-empty and the options known."""
    check_lengths(predictions, references)
    return _scorer(options)


def _scorer(options: ChrfOptions) -> CHRF:
    """sacrebleu's CHRF with these options, refusing unknown ones."""
    unknown = sorted(set(options) - ChrfOptions.__optional_keys__)
    if unknown:  # what a signature with the three named parameters would refuse
        raise TypeError(f"unexpected chrF option(s) {unknown}; known: {sorted(ChrfOptions.__optional_keys__)}")
    return CHRF(
        char_order=options.get("char_order", 6), word_order=options.get("word_order", 0), beta=options.get("beta", 2)
    )


def corpus_score(predictions: Sequence[str], references: Sequence[References], **options: Unpack[ChrfOptions]) -> float:
    """Corpus chrF (0..100); also usable as a bootstrap statistic."""
    metric = _chrf(predictions, references, options)
    # sacrebleu annotates reference streams as str only, but documents and skips None (a missing reference).
    streams = _reference_streams(references)
    return float(metric.corpus_score(list(predictions), streams).score)  # type: ignore[arg-type]


def statistics(
    predictions: Sequence[str], references: Sequence[References], **options: Unpack[ChrfOptions]
) -> np.ndarray:
    """Each example's chrF sufficient statistics, one row per example: sacrebleu's hypothesis, reference
    and match counts per n-gram order (the best-matching reference's, where there are several).

    Corpus chrF is a function of their column sums (`score_of_sums`), as sacrebleu computes it, so the
    corpus chrF of a bootstrap resample is an index sum, not a re-extraction of every n-gram.
    """
    metric = _chrf(predictions, references, options)
    streams = _reference_streams(references)
    return np.asarray(metric._extract_corpus_statistics(list(predictions), streams), dtype=np.int64)  # type: ignore[arg-type]


def score_of_sums(totals: np.ndarray, **options: Unpack[ChrfOptions]) -> float:
    """Corpus chrF (0..100) from summed `statistics` rows: sacrebleu's own last step, on exact integer sums,
    so it equals `corpus_score` of the same examples bit for bit."""
    metric = _scorer(options)
    return float(metric._compute_score_from_stats([int(count) for count in totals]).score)


def example_scores(
    predictions: Sequence[str], references: Sequence[References], **options: Unpack[ChrfOptions]
) -> list[float]:
    """Sentence-level chrF (0..100) per example."""
    metric = _chrf(predictions, references, options)
    return [
        float(metric.sentence_score(pred, refs).score)
        for pred, refs in zip(predictions, as_reference_lists(references))
    ]


class Chrf(evaluate.Metric):
    """Corpus chrF / chrF++ from sacrebleu, 0..100."""

    def _info(self) -> evaluate.MetricInfo:
        url = "https://github.com/mjpost/sacrebleu"
        return metric_info(_DESCRIPTION, _CITATION, _INPUTS, text_features(), codebase_urls=[url])

    def _compute(
        self, predictions: list[str], references: list[References], **options: Unpack[ChrfOptions]
    ) -> dict[str, float]:
        return {"chrf": corpus_score(predictions, references, **options)}

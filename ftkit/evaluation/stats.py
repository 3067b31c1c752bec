"""Resampling statistics for "is the fine-tuned model really better?" questions.

Eval sets used for fine-tuning are small, so a metric difference of a point or
two can be noise. These functions put uncertainty on a corpus-level metric
computed from per-example data:

* :func:`bootstrap_ci` - percentile bootstrap confidence interval,
* :func:`paired_bootstrap` - two-sided paired test for system B vs system A,
* :func:`mcnemar` - exact McNemar test for paired right/wrong outcomes.

Everything is numpy-only (scipy is used for the binomial test when present),
seeded and deterministic: the same inputs and ``seed`` give the same numbers.

``data`` is per-example: a numeric array is resampled along axis 0 (so a 2-D
array of per-example columns, e.g. ``(nll, num_tokens)``, stays row-aligned);
any other sequence (strings, ``(prediction, references)`` tuples, ...) is
resampled as a list of its items. ``statistic`` maps resampled data to a
float; the default, the mean of a 1-D numeric array, runs vectorised.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "Interval",
    "bca_ci",
    "containing",
    "format_interval",
    "McNemarResult",
    "PairedBootstrapResult",
    "SumStatistic",
    "bootstrap_ci",
    "mcnemar",
    "paired_bootstrap",
]

Statistic = Callable[[Any], float]

# Upper bound on resample-index elements held in memory at once (~32 MiB of int64).
_CHUNK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class Interval:
    """A point estimate with a bootstrap confidence interval, and how the interval was made.

    `method` is "percentile", "BCa" or "none": "none" when the sample is too small for this metric's
    interval (it would not contain its own estimate); `low` and `high` are then NaN, and reports say so.
    """

    point: float
    low: float
    high: float
    confidence: float
    method: str = "percentile"

    @property
    def available(self) -> bool:
        return self.method != "none"


TOO_SMALL = "n/a: too few examples for an interval"


def format_interval(point: float, low: float | None, high: float | None) -> str:
    """'0.812 [0.770, 0.850]', or the point and why there is no interval; for every table that shows one."""
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return f"{point:.3f} ({TOO_SMALL})"
    return f"{point:.3f} [{low:.3f}, {high:.3f}]"


def containing(interval: Interval) -> Interval:
    """The interval if it contains its point estimate; else the same estimate marked "none".

    A percentile bootstrap of a statistic whose resamples are biased (macro-F1 when resamples miss
    classes) can lie entirely on one side of the estimate; such an interval says something false.
    """
    if math.isfinite(interval.low) and math.isfinite(interval.high) and interval.low <= interval.point <= interval.high:
        return interval
    return Interval(interval.point, math.nan, math.nan, interval.confidence, "none")


@dataclass(frozen=True)
class PairedBootstrapResult:
    """``difference`` = statistic(B) - statistic(A) on all examples; ``p_value`` is
    two-sided for H0: no difference."""

    difference: float
    p_value: float
    n_resamples: int


@dataclass(frozen=True)
class McNemarResult:
    """Discordant pair counts and the exact two-sided McNemar p-value."""

    only_a_correct: int
    only_b_correct: int
    p_value: float


@dataclass(frozen=True)
class SumStatistic:
    """A corpus metric that is a function of the column sums of per-example statistics (chrF of its
    n-gram counts): `rows` [examples, statistics] and `of_sums`, the metric of summed rows.

    Called on resampled rows it is the metric of that resample, at the cost of an index sum, so a
    bootstrap or a paired test passes `rows` as the data and this as the statistic.
    """

    rows: np.ndarray
    of_sums: Callable[[np.ndarray], float]

    def __call__(self, rows: np.ndarray) -> float:
        return self.of_sums(rows.sum(axis=0))


def _as_data(data: Any) -> Any:
    """Numeric data as an ndarray (fast fancy indexing); anything else as a list."""
    if isinstance(data, np.ndarray):
        return data
    try:
        arr = np.asarray(data)
    except ValueError:  # ragged nested sequences
        return list(data)
    return arr if arr.dtype.kind in "biuf" and arr.ndim >= 1 else list(data)


def _take(data: Any, idx: np.ndarray) -> Any:
    return data[idx] if isinstance(data, np.ndarray) else [data[i] for i in idx]


def _check_mean_ready(data: Any) -> np.ndarray:
    if not (isinstance(data, np.ndarray) and data.ndim == 1):
        raise ValueError("the default statistic (mean) needs 1-D numeric data; pass `statistic=`")
    return data.astype(np.float64, copy=False)


def _index_chunks(n: int, n_resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Rows of bootstrap indices, generated in bounded-memory chunks from one seeded stream."""
    rng = np.random.default_rng(seed)
    rows = max(1, _CHUNK_ELEMENTS // n)
    for start in range(0, n_resamples, rows):
        yield rng.integers(0, n, size=(min(rows, n_resamples - start), n))


def _replicates(
    samples: tuple[Any, ...],
    statistic: Callable[..., float] | None,
    n_resamples: int,
    seed: int,
) -> np.ndarray:
    """Statistic on ``n_resamples`` joint resamples of the aligned ``samples``.

    ``statistic=None`` means the mean of ``samples[0]`` (vectorised).
    """
    n = len(samples[0])
    out = np.empty(n_resamples, dtype=np.float64)
    pos = 0
    for chunk in _index_chunks(n, n_resamples, seed):
        if statistic is None:
            out[pos : pos + len(chunk)] = samples[0][chunk].mean(axis=1)
            pos += len(chunk)
            continue
        for row in chunk:
            out[pos] = statistic(*(_take(s, row) for s in samples))
            pos += 1
    return out


def _check_common(n: int, n_resamples: int) -> None:
    if n == 0:
        raise ValueError("need at least one example")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")


def bootstrap_ci(
    data: Any,
    statistic: Statistic | None = None,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Percentile bootstrap CI of ``statistic(data)`` by resampling examples.

    Examples::

        bootstrap_ci(per_example("squad_f1", preds, refs))          # mean F1
        bootstrap_ci(np.column_stack([nll, ntok]),
                     lambda x: aggregate(x[:, 0], x[:, 1])["perplexity"])
        bootstrap_ci(list(zip(preds, refs)),
                     lambda rows: corpus_score(*zip(*rows)))          # corpus chrF
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    data = _as_data(data)
    _check_common(len(data), n_resamples)
    if statistic is None:
        values = _check_mean_ready(data)
        point = float(values.mean())
        reps = _replicates((values,), None, n_resamples, seed)
    else:
        point = float(statistic(data))
        reps = _replicates((data,), statistic, n_resamples, seed)
    alpha = 1.0 - confidence
    low, high = np.quantile(reps, [alpha / 2, 1 - alpha / 2])
    return containing(Interval(point=point, low=float(low), high=float(high), confidence=confidence))


def bca_ci(
    data: Any,
    statistic: Statistic,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Bias-corrected and accelerated (BCa) bootstrap CI of a corpus statistic, by scipy.

    For statistics whose percentile bootstrap is biased (macro-F1 over many classes and few examples:
    a resample that misses a class scores lower, so the percentiles sit below the estimate). Resamples
    are of example indices, so any per-example data works; the jackknife adds `len(data)` evaluations.
    An interval that still excludes its estimate (or is undefined) is returned as method "none".
    """
    import warnings

    from scipy.stats import bootstrap

    data = _as_data(data)
    _check_common(len(data), n_resamples)
    point = float(statistic(data))

    def on_indices(indices: np.ndarray) -> float:
        return float(statistic(_take(data, indices.astype(np.intp))))

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")  # DegenerateDataWarning: handled below, as method "none"
        result = bootstrap(
            (np.arange(len(data)),),
            on_indices,
            n_resamples=n_resamples,
            confidence_level=confidence,
            method="BCa",
            vectorized=False,
            rng=np.random.default_rng(seed),
        )
    low, high = result.confidence_interval
    return containing(Interval(point, float(low), float(high), confidence, "BCa"))


def paired_bootstrap(
    a: Any,
    b: Any,
    statistic: Statistic | None = None,
    *,
    n_resamples: int = 1000,
    seed: int = 0,
) -> PairedBootstrapResult:
    """Paired bootstrap test of statistic(B) - statistic(A) on the same examples.

    Both systems are resampled with the same example indices. The replicate
    differences are shifted to be centred on zero (the null hypothesis), and
    the two-sided p-value is the share whose magnitude reaches the observed
    one, with the +1 correction so it is never 0:
    ``(1 + #{|d* - d| >= |d|}) / (n_resamples + 1)``. Identical systems give 1.
    """
    a, b = _as_data(a), _as_data(b)
    if len(a) != len(b):
        raise ValueError(f"systems were scored on different numbers of examples: {len(a)} vs {len(b)}")
    _check_common(len(a), n_resamples)
    if statistic is None:
        # mean(b*) - mean(a*) == mean((b - a)*): one vectorised pass.
        deltas = _check_mean_ready(b) - _check_mean_ready(a)
        observed = float(deltas.mean())
        reps = _replicates((deltas,), None, n_resamples, seed)
    else:
        stat = statistic
        observed = float(stat(b) - stat(a))
        reps = _replicates((a, b), lambda ra, rb: stat(rb) - stat(ra), n_resamples, seed)
    extreme = int(np.count_nonzero(np.abs(reps - observed) >= abs(observed)))
    return PairedBootstrapResult(
        difference=observed,
        p_value=(extreme + 1) / (n_resamples + 1),
        n_resamples=n_resamples,
    )


def _binom_half_two_sided(k: int, n: int) -> float:
    """Exact two-sided binomial p-value for k of n under p = 0.5 (symmetric: twice the smaller tail)."""
    tail = sum(math.comb(n, i) for i in range(min(k, n - k) + 1))
    return min(1.0, 2 * tail / 2**n)


def mcnemar(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> McNemarResult:
    """Exact (binomial) McNemar test on paired per-example correctness.

    Only discordant examples carry information: under H0 each is equally
    likely to favour A or B, so ``only_a_correct ~ Binomial(n_discordant, 1/2)``.
    With no discordant pairs the p-value is 1.
    """
    ca = np.asarray(correct_a, dtype=bool)
    cb = np.asarray(correct_b, dtype=bool)
    if ca.shape != cb.shape or ca.ndim != 1:
        raise ValueError(f"correct_a and correct_b must be aligned 1-D, got {ca.shape} and {cb.shape}")
    only_a = int(np.count_nonzero(ca & ~cb))
    only_b = int(np.count_nonzero(~ca & cb))
    n = only_a + only_b
    if n == 0:
        p = 1.0
    else:
        try:
            from scipy.stats import binomtest
        except ImportError:  # scipy ships with scikit-learn, but stay numpy-only if absent
            p = _binom_half_two_sided(only_a, n)
        else:
            p = float(binomtest(only_a, n, 0.5, alternative="two-sided").pvalue)
    return McNemarResult(only_a_correct=only_a, only_b_correct=only_b, p_value=p)

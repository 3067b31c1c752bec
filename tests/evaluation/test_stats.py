"""Tests for ftkit.evaluation.stats: bootstrap CIs, paired bootstrap and McNemar."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ftkit.evaluation.stats import (
    Interval,
    McNemarResult,
    _binom_half_two_sided,
    bootstrap_ci,
    mcnemar,
    paired_bootstrap,
)


def _normal(n: int, seed: int = 1, loc: float = 0.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(loc, 1.0, size=n)


# --------------------------------------------------------------------------- bootstrap_ci


def test_ci_contains_point_and_matches_normal_theory() -> None:
    x = _normal(1000)
    ci = bootstrap_ci(x)
    assert isinstance(ci, Interval)
    assert ci.point == pytest.approx(float(x.mean()))
    assert ci.low < ci.point < ci.high
    # mean of N(0,1), n=1000: half-width ~ 1.96 / sqrt(1000) = 0.062
    assert (ci.high - ci.low) / 2 == pytest.approx(1.96 / math.sqrt(1000), rel=0.15)


def test_ci_narrows_with_more_data() -> None:
    small = bootstrap_ci(_normal(50))
    large = bootstrap_ci(_normal(5000))
    assert (large.high - large.low) < (small.high - small.low) / 5


def test_ci_seeded_determinism() -> None:
    x = _normal(300)
    assert bootstrap_ci(x, seed=7) == bootstrap_ci(x, seed=7)
    assert bootstrap_ci(x, seed=7) != bootstrap_ci(x, seed=8)


def test_vectorised_mean_equals_generic_statistic_path() -> None:
    x = _normal(200)
    fast = bootstrap_ci(x, seed=3)
    slow = bootstrap_ci(x, np.mean, seed=3)
    assert fast.low == pytest.approx(slow.low) and fast.high == pytest.approx(slow.high)


def test_ci_constant_data_and_confidence_level() -> None:
    ci = bootstrap_ci([1.0, 1.0, 1.0], n_resamples=50)
    assert (ci.point, ci.low, ci.high) == (1.0, 1.0, 1.0)
    x = _normal(400)
    wide, narrow = bootstrap_ci(x, confidence=0.99), bootstrap_ci(x, confidence=0.5)
    assert wide.low < narrow.low < narrow.high < wide.high


def test_ci_ratio_statistic_on_2d_array() -> None:
    """Perplexity-style corpus statistic: rows (nll, tokens) are resampled together."""
    nll = np.array([2.0, 4.0, 3.0, 5.0, 1.0])
    tok = np.array([2, 4, 3, 5, 1])
    ci = bootstrap_ci(np.column_stack([nll, tok]), lambda rows: math.exp(rows[:, 0].sum() / rows[:, 1].sum()))
    # every example has exactly 1 nat/token, so every resample gives e
    assert ci.point == pytest.approx(math.e)
    assert ci.low == pytest.approx(math.e) and ci.high == pytest.approx(math.e)


def test_ci_non_numeric_records() -> None:
    """Corpus metrics over (prediction, reference) records are resampled as lists."""
    rows = [("a", "a"), ("b", "a"), ("c", "c"), ("d", "d")]
    ci = bootstrap_ci(rows, lambda rs: sum(p == r for p, r in rs) / len(rs), n_resamples=200)
    assert ci.point == 0.75
    assert 0.0 <= ci.low <= ci.point <= ci.high <= 1.0


def test_ci_validation() -> None:
    with pytest.raises(ValueError):
        bootstrap_ci([])
    with pytest.raises(ValueError):
        bootstrap_ci([1.0], confidence=1.0)
    with pytest.raises(ValueError):
        bootstrap_ci([1.0], n_resamples=0)
    with pytest.raises(ValueError, match="statistic"):
        bootstrap_ci(["a", "b"])


# --------------------------------------------------------------------------- paired_bootstrap


def test_paired_bootstrap_clearly_better_system() -> None:
    a = _normal(200, seed=2)
    b = a + 0.5 + 0.1 * _normal(200, seed=3)
    res = paired_bootstrap(a, b, n_resamples=1000)
    assert res.difference == pytest.approx(float(b.mean() - a.mean()))
    assert res.difference > 0.4
    assert res.p_value == pytest.approx(1 / 1001)  # no resample reaches |d| under H0
    flipped = paired_bootstrap(b, a, n_resamples=1000)
    assert flipped.difference == pytest.approx(-res.difference)
    assert flipped.p_value == pytest.approx(res.p_value)


def test_paired_bootstrap_identical_systems() -> None:
    a = _normal(100)
    assert paired_bootstrap(a, a.copy()).p_value == 1.0
    assert paired_bootstrap(a, a.copy()).difference == 0.0
    assert paired_bootstrap(a, a, statistic=np.median, n_resamples=100).p_value == 1.0


def test_paired_bootstrap_noise_difference_is_not_significant() -> None:
    # 0/1 correctness; B fixes 11 of A's errors and breaks 9 of its successes:
    # observed difference 2/400, well within noise (z ~ 0.45).
    a = np.array([0.0] * 200 + [1.0] * 200)
    b = a.copy()
    b[:11] = 1.0
    b[200:209] = 0.0
    res = paired_bootstrap(a, b)
    assert res.difference == pytest.approx(2 / 400)
    assert res.p_value > 0.3


def test_paired_bootstrap_custom_statistic_and_determinism() -> None:
    refs = ["x", "y"] * 50
    a = [(p, r) for p, r in zip(["x"] * 100, refs)]  # 50% accurate
    b = [(r, r) for r in refs[:90]] + [("z", r) for r in refs[90:]]  # 90% accurate

    def acc(rows: list[tuple[str, str]]) -> float:
        return sum(p == r for p, r in rows) / len(rows)

    res = paired_bootstrap(a, b, acc, n_resamples=300, seed=5)
    assert res.difference == pytest.approx(0.4)
    assert res.p_value < 0.01
    assert res == paired_bootstrap(a, b, acc, n_resamples=300, seed=5)


def test_paired_bootstrap_validation() -> None:
    with pytest.raises(ValueError, match="different numbers"):
        paired_bootstrap([1.0, 2.0], [1.0])


# --------------------------------------------------------------------------- McNemar


def test_mcnemar_known_discordant_counts() -> None:
    # 10 examples only A gets right, 2 only B gets right, 5 both right, 3 both wrong.
    correct_a = [True] * 10 + [False] * 2 + [True] * 5 + [False] * 3
    correct_b = [False] * 10 + [True] * 2 + [True] * 5 + [False] * 3
    res = mcnemar(correct_a, correct_b)
    assert isinstance(res, McNemarResult)
    assert (res.only_a_correct, res.only_b_correct) == (10, 2)
    # Exact: 2 * P(X <= 2), X ~ Bin(12, 1/2) = 2 * (1 + 12 + 66) / 4096 = 158 / 4096
    assert res.p_value == pytest.approx(158 / 4096)
    assert mcnemar(correct_b, correct_a).p_value == pytest.approx(158 / 4096)


def test_mcnemar_degenerate_cases() -> None:
    assert mcnemar([True, False], [True, False]) == McNemarResult(0, 0, 1.0)
    assert mcnemar([True, False], [False, True]).p_value == 1.0  # b == c
    with pytest.raises(ValueError):
        mcnemar([True], [True, False])


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=1, max_value=60), st.data())
def test_fallback_binomial_matches_scipy(n: int, data: st.DataObject) -> None:
    from scipy.stats import binomtest

    k = data.draw(st.integers(min_value=0, max_value=n))
    assert _binom_half_two_sided(k, n) == pytest.approx(binomtest(k, n, 0.5).pvalue)

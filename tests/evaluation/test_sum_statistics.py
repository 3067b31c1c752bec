"""Bootstraps of corpus chrF from per-example n-gram counts equal the bootstraps that recompute chrF."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from ftkit.evaluation import evaluator
from ftkit.evaluation.metrics import chrf, sum_statistic
from ftkit.evaluation.stats import bca_ci, paired_bootstrap
from ftkit.tasks import Example, Task, get_task
from ftkit.tasks.chat import ChatOptions

WORDS = "refund order parcel card account password delivery invoice address store".split()


def _conversations(n: int) -> tuple[Task, list[Example], list[dict[str, Any]], list[dict[str, Any]]]:
    task = get_task(ChatOptions(name="chat"), max_length=256)
    rng = np.random.default_rng(4)
    examples, base, adapter = [], [], []
    for i in range(n):
        reply = " ".join(rng.choice(WORDS, size=6))
        messages = [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": reply}]
        examples.append(task.make_example({"messages": messages}, f"f:row {i}"))
        base.append({"reply": " ".join(rng.choice(WORDS, size=5)), "nll": 9.0, "tokens": 6})
        adapter.append({"reply": reply if i % 3 else " ".join(rng.choice(WORDS, size=6)), "nll": 6.0, "tokens": 6})
    return task, examples, base, adapter


def test_score_of_summed_statistics_is_corpus_chrf_of_any_subset() -> None:
    task, examples, predictions, _ = _conversations(30)
    replies, references = [p["reply"] for p in predictions], [[e.reference] for e in examples]
    statistic = sum_statistic("chrf", replies, references)
    for subset in (range(30), [0, 0, 3, 29, 7], [5]):
        rows = list(subset)
        expected = chrf.corpus_score([replies[i] for i in rows], [references[i] for i in rows])
        assert statistic(statistic.rows[rows]) == expected  # bit for bit: integer counts, sacrebleu's arithmetic


def test_chrf_intervals_and_paired_test_equal_todays_for_the_same_seed() -> None:
    """What the evaluator reports from sufficient statistics is what recomputing chrF per resample gave."""
    task, examples, base, adapter = _conversations(20)
    systems = [
        evaluator.score_system(task, name, predictions, 1.0, examples, ["chrf"], 100)
        for name, predictions in (("base", base), ("adapter", adapter))
    ]
    recomputed = evaluator._statistic(task, "chrf")
    for system, predictions in zip(systems, (base, adapter)):
        today = bca_ci(list(zip(predictions, examples)), recomputed, n_resamples=100, seed=0)
        assert system.metrics["chrf"] == today
    comparison = evaluator.compare(task, systems[0], systems[1], "chrf", examples, 100)
    paired = paired_bootstrap(
        list(zip(base, examples)), list(zip(adapter, examples)), recomputed, n_resamples=100, seed=0
    )
    assert (comparison.difference, comparison.p_value) == (paired.difference, paired.p_value)
    assert comparison.difference == pytest.approx(
        chrf.corpus_score([p["reply"] for p in adapter], [[e.reference] for e in examples])
        - chrf.corpus_score([p["reply"] for p in base], [[e.reference] for e in examples])
    )

"""Held-out evaluation: the base model and each adapter on the same examples, with uncertainty.

Every system predicts through its task's batched, streamed `predict`. Each metric gets a
seeded 95 % bootstrap confidence interval, and each adapter is compared with the base model on
the same examples with the paired test its task names for the metric (McNemar's exact test for
per-example 0/1 metrics, a paired bootstrap for the rest). Nothing here knows any task.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ftkit.evaluation.sample import Sample
from ftkit.evaluation.stats import Interval, SumStatistic, bca_ci, bootstrap_ci, mcnemar, paired_bootstrap
from ftkit.recipe import EvalConfig
from ftkit.tasks import Example, Task

BASE = "base"
ALPHA = 0.05
LOUD_TRUNCATION = 0.05  # above this share of truncated inputs, the report says so in capitals
TEST_NAMES = {"mcnemar": "McNemar exact", "bootstrap": "paired bootstrap"}


@dataclass
class SystemResult:
    name: str
    predictions: list[Any]
    metrics: dict[str, Interval]
    seconds: float
    example_scores: list[float] = field(default_factory=list)  # per example, ranks what changed (Task.example_scores)
    confusion: tuple[list[str], list[list[int]]] | None = None  # classification tasks only
    per_example: dict[str, list[float]] = field(default_factory=dict)  # metrics that are means of these
    sums: dict[str, SumStatistic] = field(default_factory=dict)  # metrics of summed per-example statistics

    @property
    def examples_per_s(self) -> float:
        return len(self.predictions) / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Comparison:
    system: str
    metric: str
    difference: float
    p_value: float
    test: str
    lower_is_better: bool = False

    @property
    def significant(self) -> bool:
        return self.p_value < ALPHA

    @property
    def improved(self) -> bool:
        return self.difference < 0 if self.lower_is_better else self.difference > 0


@dataclass(frozen=True)
class Truncation:
    """How many evaluation inputs were over `Task.eval_budget` and lost `where` (e.g. the prompt's middle)."""

    count: int
    total: int
    where: str
    fits: int  # the data.max_length that would have kept every input whole

    @property
    def share(self) -> float:
        return self.count / self.total if self.total else 0.0

    @property
    def loud(self) -> bool:
        return self.share > LOUD_TRUNCATION

    def describe(self) -> str:
        if not self.count:
            return f"truncated inputs: 0 of {self.total}"
        text = (
            f"truncated inputs: {self.count} of {self.total} ({100 * self.share:.1f}%) lost {self.where} "
            f"to fit data.max_length; data.max_length: {self.fits} would fit them all"
        )
        return f"WARNING: {text} (the cut text may hold the answer)" if self.loud else text


def count_truncated(task: Task, tokenizer: Any, examples: Sequence[Example]) -> Truncation:
    """The examples `predict` will cut, asked of the task (its prompt ids and budget), before predicting."""
    budget = task.eval_budget(tokenizer)
    over = [len(task.eval_prompt_ids(e, tokenizer)) - budget for e in examples]
    over = [n for n in over if n > 0]
    return Truncation(len(over), len(examples), task.eval_cut, task.max_length + max(over, default=0))


@dataclass
class EvalReport:
    task: Task
    split: str
    examples: list[Example]
    metric_names: list[str]
    systems: list[SystemResult]
    comparisons: list[Comparison]
    resamples: int
    training: dict[str, Any] = field(default_factory=dict)
    sample: Sample | None = None  # how the examples were drawn from the split (eval.max_examples)
    truncation: Truncation | None = None
    warnings: list[str] = field(default_factory=list)  # valid but suspicious held-out data (evaluation/sample.py)

    def system(self, name: str) -> SystemResult:
        return next(s for s in self.systems if s.name == name)


@contextlib.contextmanager
def _as_system(model: Any, adapter: str | None) -> Iterator[None]:
    """Run the model as the base (adapters disabled) or with one named adapter active."""
    if adapter is None:
        disable = getattr(model, "disable_adapter", None)
        with disable() if disable else contextlib.nullcontext():
            yield
    else:
        model.set_adapter(adapter)
        yield


def predict_system(
    task: Task, model: Any, tokenizer: Any, examples: Sequence[Example], batch_size: int, name: str
) -> tuple[list[Any], float]:
    """Predictions for every example, in input order, with a progress bar in examples/s.

    Examples are batched by length (longest first, so a batch too big for memory shows at once)
    to cut padding; predictions are put back in input order. A model prepared for 4-bit training runs
    in its compute dtype meanwhile (`frozen_in_compute_dtype`). Returns (predictions, seconds).
    """
    from ftkit.evaluation.inference import frozen_in_compute_dtype  # torch: only when predicting

    model.eval()
    order = sorted(range(len(examples)), key=lambda i: -task.size(examples[i]))
    with (
        frozen_in_compute_dtype(model),
        tqdm(total=len(examples), desc=f"eval {name}", unit="ex", dynamic_ncols=True) as bar,
    ):
        started = time.perf_counter()
        ordered = task.predict(model, tokenizer, [examples[i] for i in order], batch_size, bar.update)
        seconds = time.perf_counter() - started
    predictions: list[Any] = [None] * len(examples)
    for position, index in enumerate(order):
        predictions[index] = ordered[position]
    return predictions, seconds


def evaluate(
    task: Task,
    model: Any,
    tokenizer: Any,
    examples: list[Example],
    adapters: dict[str, str],
    cfg: EvalConfig,
    *,
    split: str,
    sample: Sample | None = None,
    warnings: Sequence[str] = (),
) -> EvalReport:
    """Evaluate the base model and each adapter (display name -> peft adapter name)."""
    truncation = count_truncated(task, tokenizer, examples)
    metric_names = list(cfg.metrics or task.metrics)
    systems: list[SystemResult] = []
    for name, adapter in [(BASE, None), *adapters.items()]:
        with _as_system(model, adapter):
            predictions, seconds = predict_system(task, model, tokenizer, examples, cfg.batch_size, name)
        systems.append(score_system(task, name, predictions, seconds, examples, metric_names, cfg.bootstrap))
    comparisons = [
        compare(task, systems[0], system, metric, examples, cfg.bootstrap)
        for system in systems[1:]
        for metric in metric_names
    ]
    return EvalReport(
        task=task,
        split=split,
        examples=examples,
        metric_names=metric_names,
        systems=systems,
        comparisons=comparisons,
        resamples=cfg.bootstrap,
        sample=sample,
        truncation=truncation,
        warnings=list(warnings),
    )


def score_system(
    task: Task,
    name: str,
    predictions: list[Any],
    seconds: float,
    examples: list[Example],
    metric_names: list[str],
    resamples: int,
) -> SystemResult:
    """Each metric with its bootstrap CI: percentile and vectorised over per-example values where the metric
    is their mean; BCa where it is a corpus statistic (macro-F1, chrF, ...), whose percentile bootstrap is
    biased on small samples. Either way an interval that excludes its estimate is reported as none."""
    means = task.per_example(predictions, examples)
    sums = task.sufficient_statistics(predictions, examples)
    rows = list(zip(predictions, examples))
    intervals = {
        metric: bootstrap_ci(np.asarray(means[metric]), n_resamples=resamples, seed=0)
        if metric in means
        else bca_ci(sums[metric].rows, sums[metric], n_resamples=resamples, seed=0)
        if metric in sums
        else bca_ci(rows, _statistic(task, metric), n_resamples=resamples, seed=0)
        for metric in metric_names
    }
    scores = task.example_scores(predictions, examples)
    confusion = task.confusion(predictions, examples)
    return SystemResult(name, predictions, intervals, seconds, scores, confusion, means, sums)


def _statistic(task: Task, metric: str) -> Callable[[Sequence[tuple[Any, Example]]], float]:
    def statistic(rows: Sequence[tuple[Any, Example]]) -> float:
        predictions, examples = zip(*rows)
        return task.score(list(predictions), list(examples), only=metric)[metric]

    return statistic


def compare(
    task: Task, base: SystemResult, other: SystemResult, metric: str, examples: list[Example], resamples: int
) -> Comparison:
    """The paired test the task names for this metric, on the same examples (`other` minus `base`; a sweep
    compares its winner with its runner-up this way)."""
    lower = metric in task.lower_is_better
    test = task.paired_test(metric)
    if test == "mcnemar":
        result = mcnemar([s == 1.0 for s in base.per_example[metric]], [s == 1.0 for s in other.per_example[metric]])
        difference = other.metrics[metric].point - base.metrics[metric].point
        return Comparison(other.name, metric, difference, result.p_value, TEST_NAMES[test], lower)
    if metric in base.per_example:
        paired = paired_bootstrap(
            np.asarray(base.per_example[metric]), np.asarray(other.per_example[metric]), n_resamples=resamples, seed=0
        )
    elif metric in base.sums:  # the same seed: every comparison resamples the same example indices
        statistic = base.sums[metric]
        paired = paired_bootstrap(statistic.rows, other.sums[metric].rows, statistic, n_resamples=resamples, seed=0)
    else:
        paired = paired_bootstrap(
            list(zip(base.predictions, examples)),
            list(zip(other.predictions, examples)),
            _statistic(task, metric),
            n_resamples=resamples,
            seed=0,
        )
    return Comparison(other.name, metric, paired.difference, paired.p_value, TEST_NAMES[test], lower)

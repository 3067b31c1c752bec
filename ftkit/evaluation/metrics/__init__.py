"""Offline evaluation metrics for ftkit, shipped as local HuggingFace ``evaluate`` modules.

``evaluate.load("accuracy")`` resolves names against the Hub, which fails on an
air-gapped training box. Each metric here is a standalone evaluate script in
this folder (``accuracy.py``, ``squad.py``, ...), so ``evaluate.load`` gets a
local file path and never touches the network: it copies the script and its
``from ._text import ...`` helper into the dynamic-modules cache
(``$HF_MODULES_CACHE``) and imports it from there.

Score scales: accuracy, macro_f1, squad (exact_match, f1) and rouge_l are in
0..1; chrf is 0..100 (sacrebleu's scale); perplexity is >= 1.

``per_example`` gives per-example scores so :mod:`ftkit.evaluation.stats` can bootstrap
over examples. The submodules are imported lazily because importing
``evaluate`` costs several seconds (it pulls in transformers).
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import evaluate

    from ftkit.evaluation.stats import SumStatistic

__all__ = [
    "available_metrics",
    "available_per_example",
    "compute",
    "load_metric",
    "metric_path",
    "per_example",
    "sum_statistic",
]

_HERE = Path(__file__).resolve().parent

# per_example name -> (submodule, function, key into a dict result or None)
_PER_EXAMPLE: dict[str, tuple[str, str, str | None]] = {
    "accuracy": ("accuracy", "example_scores", None),
    "squad_exact_match": ("squad", "example_scores", "exact_match"),
    "squad_f1": ("squad", "example_scores", "f1"),
    "rouge_l": ("rouge_l", "example_scores", None),
    "chrf": ("chrf", "example_scores", None),
}

# corpus metrics that are a function of summed per-example statistics -> (submodule, statistics, score of sums)
_SUM_STATISTICS: dict[str, tuple[str, str, str]] = {"chrf": ("chrf", "statistics", "score_of_sums")}


def available_metrics() -> list[str]:
    """Names accepted by :func:`load_metric`: every non-private ``*.py`` in this folder."""
    return sorted(p.stem for p in _HERE.glob("*.py") if not p.stem.startswith("_"))


def available_per_example() -> list[str]:
    """Names accepted by :func:`per_example`."""
    return sorted(_PER_EXAMPLE)


def _unknown(kind: str, name: str, known: list[str]) -> ValueError:
    return ValueError(f"unknown {kind} {name!r}; available: {', '.join(known)}")


def metric_path(name: str) -> Path:
    """Absolute path of a metric's evaluate script (what ``evaluate.load`` is given)."""
    if name not in available_metrics():
        raise _unknown("metric", name, available_metrics())
    return _HERE / f"{name}.py"


def load_metric(name: str, **load_kwargs: Any) -> evaluate.EvaluationModule:
    """Load one of :func:`available_metrics` offline via ``evaluate.load(<script path>)``.

    ``load_kwargs`` go to ``evaluate.load``. ``keep_in_memory`` defaults to True
    for single-process use: evaluate otherwise buffers inputs in arrow files
    under ``$HF_METRICS_CACHE`` guarded by a lock named after the (default)
    experiment id, so two concurrent runs collide. Distributed evaluation
    (``num_process > 1``) needs the on-disk mode and keeps evaluate's default.
    """
    path = metric_path(name)
    load_kwargs.setdefault("keep_in_memory", load_kwargs.get("num_process", 1) == 1)
    import evaluate  # deferred: heavy import

    return evaluate.load(str(path), **load_kwargs)


@functools.cache
def _loaded(name: str) -> evaluate.EvaluationModule:
    return load_metric(name)


def compute(name: str, **inputs: Any) -> dict[str, Any]:
    """Run a metric's own arithmetic (its ``_compute``) on in-memory inputs.

    Same numbers as ``load_metric(name).compute(...)``, without evaluate's per-call Arrow
    round-trip (about 10x slower): bootstrap confidence intervals call this a thousand times.
    The module is loaded once per process.
    """
    return _loaded(name)._compute(**inputs)


def per_example(name: str, predictions: Sequence[str], references: Sequence[Any], **kwargs: Any) -> list[float]:
    """Per-example scores on the metric's own scale, for bootstrap resampling.

    Means of ``accuracy`` (0/1), ``squad_exact_match``, ``squad_f1`` and
    ``rouge_l`` equal the corpus metric. ``chrf`` is sentence-level chrF, whose
    mean differs from corpus chrF; to bootstrap corpus chrF, resample examples
    with :func:`ftkit.evaluation.metrics.chrf.corpus_score` as the statistic instead.
    ``kwargs`` go to the scorer (e.g. ``word_order=2`` for chrF++).
    """
    if name not in _PER_EXAMPLE:
        raise _unknown("per-example metric", name, available_per_example())
    module_name, func_name, key = _PER_EXAMPLE[name]
    scorer: Callable[..., Any] = getattr(importlib.import_module(f"{__name__}.{module_name}"), func_name)
    scores = scorer(predictions, references, **kwargs)
    return list(scores[key] if key is not None else scores)


def sum_statistic(name: str, predictions: Sequence[str], references: Sequence[Any]) -> SumStatistic:
    """A corpus metric as per-example sufficient statistics and the metric of their sum (`chrf`: sacrebleu's
    n-gram counts), for bootstraps that resample by index sums instead of recomputing the metric."""
    from ftkit.evaluation.stats import SumStatistic

    if name not in _SUM_STATISTICS:
        raise _unknown("sum-statistic metric", name, sorted(_SUM_STATISTICS))
    module_name, rows_name, score_name = _SUM_STATISTICS[name]
    module = importlib.import_module(f"{__name__}.{module_name}")
    return SumStatistic(getattr(module, rows_name)(predictions, references), getattr(module, score_name))

"""Held-out evaluation: the base model and each adapter on the same examples, with uncertainty.

Every system predicts through its task's batched, streamed `predict`. Each metric gets a
seeded 95 % bootstrap confidence interval, and each adapter is compared with the base model on
the same examples: McNemar's exact test for accuracy, a paired bootstrap for everything else.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ftkit import runs
from ftkit.evaluation import plots
from ftkit.recipe import EvalConfig
from ftkit.evaluation.stats import Interval, bootstrap_ci, mcnemar, paired_bootstrap
from ftkit.tasks import Example, Task

BASE = "base"
ALPHA = 0.05
SCHEMA = "ftkit.metrics/1"


@dataclass
class SystemResult:
    name: str
    predictions: list[Any]
    metrics: dict[str, Interval]
    seconds: float
    example_scores: list[float] = field(default_factory=list)  # per example, the primary metric (or 1.0 = right)
    confusion: tuple[list[str], list[list[int]]] | None = None  # classification tasks only
    per_example: dict[str, list[float]] = field(default_factory=dict)  # metrics that are means of these

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


@dataclass
class EvalReport:
    task: str
    split: str
    examples: list[Example]
    metric_names: list[str]
    systems: list[SystemResult]
    comparisons: list[Comparison]
    resamples: int
    training: dict[str, Any] = field(default_factory=dict)

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


def predict_system(task: Task, model: Any, tokenizer: Any, examples: Sequence[Example], batch_size: int, name: str) -> tuple[list[Any], float]:
    """Predictions for every example, in input order, with a progress bar in examples/s.

    Examples are batched by length (longest first, so a batch too big for memory shows at once)
    to cut padding; predictions are put back in input order. Returns (predictions, seconds).
    """
    model.eval()
    order = sorted(range(len(examples)), key=lambda i: -_length(examples[i]))
    with tqdm(total=len(examples), desc=f"eval {name}", unit="ex", dynamic_ncols=True) as bar:
        started = time.perf_counter()
        ordered = task.predict(model, tokenizer, [examples[i] for i in order], batch_size, bar.update)
        seconds = time.perf_counter() - started
    predictions: list[Any] = [None] * len(examples)
    for position, index in enumerate(order):
        predictions[index] = ordered[position]
    return predictions, seconds


def _length(example: Example) -> int:
    return len(example.prompt) + sum(len(turn["content"]) for turn in example.messages or ())


def evaluate(
    task: Task,
    model: Any,
    tokenizer: Any,
    examples: list[Example],
    adapters: dict[str, str],
    cfg: EvalConfig,
    *,
    split: str,
) -> EvalReport:
    """Evaluate the base model and each adapter (display name -> peft adapter name)."""
    metric_names = list(cfg.metrics or task.metrics)
    systems: list[SystemResult] = []
    for name, adapter in [(BASE, None), *adapters.items()]:
        with _as_system(model, adapter):
            predictions, seconds = predict_system(task, model, tokenizer, examples, cfg.batch_size, name)
        rows = list(zip(predictions, examples))
        means = task.per_example(predictions, examples)
        intervals = {
            metric: bootstrap_ci(np.asarray(means[metric]), n_resamples=cfg.bootstrap, seed=0)
            if metric in means
            else bootstrap_ci(rows, _statistic(task, metric), n_resamples=cfg.bootstrap, seed=0)
            for metric in metric_names
        }
        scores = means.get(task.metrics[0]) or [float(p == e.reference) for p, e in rows]
        systems.append(SystemResult(name, predictions, intervals, seconds, scores, task.confusion(predictions, examples), means))
    comparisons = [
        _compare(task, systems[0], system, metric, examples, cfg.bootstrap) for system in systems[1:] for metric in metric_names
    ]
    return EvalReport(
        task=task.name,
        split=split,
        examples=examples,
        metric_names=metric_names,
        systems=systems,
        comparisons=comparisons,
        resamples=cfg.bootstrap,
    )


def _statistic(task: Task, metric: str) -> Any:
    def statistic(rows: Sequence[tuple[Any, Example]]) -> float:
        predictions, examples = zip(*rows)
        return task.score(list(predictions), list(examples), only=metric)[metric]

    return statistic


def _compare(task: Task, base: SystemResult, other: SystemResult, metric: str, examples: list[Example], resamples: int) -> Comparison:
    """McNemar's exact test for accuracy (paired right/wrong), a paired bootstrap for the rest."""
    lower = metric in task.lower_is_better
    if metric == "accuracy":
        result = mcnemar([s == 1.0 for s in base.example_scores], [s == 1.0 for s in other.example_scores])
        difference = other.metrics[metric].point - base.metrics[metric].point
        return Comparison(other.name, metric, difference, result.p_value, "McNemar exact", lower)
    if metric in base.per_example:
        paired = paired_bootstrap(np.asarray(base.per_example[metric]), np.asarray(other.per_example[metric]), n_resamples=resamples, seed=0)
    else:
        paired = paired_bootstrap(
            list(zip(base.predictions, examples)), list(zip(other.predictions, examples)), _statistic(task, metric),
            n_resamples=resamples, seed=0,
        )
    return Comparison(other.name, metric, paired.difference, paired.p_value, "paired bootstrap", lower)


def to_json(report: EvalReport) -> dict[str, Any]:
    """The stable, documented schema of metrics.json (see README, "metrics.json")."""
    return {
        "schema": SCHEMA,
        "task": report.task,
        "split": report.split,
        "examples": len(report.examples),
        "primary_metric": report.metric_names[0],
        "confidence": 0.95,
        "bootstrap_resamples": report.resamples,
        "systems": {
            s.name: {
                "metrics": {m: {"value": i.point, "ci_low": i.low, "ci_high": i.high} for m, i in s.metrics.items()},
                "eval_seconds": round(s.seconds, 2),
                "examples_per_s": round(s.examples_per_s, 2),
            }
            for s in report.systems
        },
        "comparisons": [
            {
                "system": c.system,
                "baseline": BASE,
                "metric": c.metric,
                "difference": c.difference,
                "p_value": c.p_value,
                "test": c.test,
                "significant": c.significant,
            }
            for c in report.comparisons
        ],
        "training": report.training,
    }


def _fmt(interval: Interval) -> str:
    return f"{interval.point:.3f} [{interval.low:.3f}, {interval.high:.3f}]"


def render_table(report: EvalReport) -> str:
    """Plain-text table for the terminal: each system's metrics with 95 % CIs, then the comparisons."""
    names = [s.name for s in report.systems]
    width = max(24, *(len(n) + 2 for n in names))
    lines = [f"held-out {report.split}: {len(report.examples)} examples, task {report.task} (95% bootstrap CI)"]
    lines.append(f"{'metric':<12}" + "".join(f"{n:<{width}}" for n in names))
    for metric in report.metric_names:
        lines.append(f"{metric:<12}" + "".join(f"{_fmt(s.metrics[metric]):<{width}}" for s in report.systems))
    for c in report.comparisons:
        verdict = "significant" if c.significant else "NOT significant"
        lines.append(f"{c.system} vs base, {c.metric}: {c.difference:+.3f} (p = {c.p_value:.3g}, {c.test}; {verdict} at 0.05)")
    return "\n".join(lines)


def render_markdown(report: EvalReport) -> str:
    """report.md: the table with CIs, significance in words, and examples the adapter fixed and broke."""
    names = [s.name for s in report.systems]
    out = [f"# Evaluation: {report.task} on {report.split}", ""]
    out.append(f"{len(report.examples)} held-out examples. Values with 95 % bootstrap confidence intervals "
               f"({report.resamples} resamples, seed 0).")
    out += ["", "| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for metric in report.metric_names:
        out.append(f"| {metric} | " + " | ".join(_fmt(s.metrics[metric]) for s in report.systems) + " |")
    out += ["", "## Is the adapter better?", ""]
    for c in report.comparisons:
        if c.significant:
            word = "better" if c.improved else "worse"
            out.append(f"- **{c.system}** is {word} than the base on {c.metric} by {c.difference:+.3f} (p = {c.p_value:.3g}, {c.test}).")
        else:
            out.append(f"- **{c.system}** vs base on {c.metric}: {c.difference:+.3f}, **not significant** (p = {c.p_value:.3g}, {c.test}); "
                       "this difference could be noise.")
    out += ["", "| system | eval time (s) | examples/s |", "|---|---|---|"]
    out += [f"| {s.name} | {s.seconds:.1f} | {s.examples_per_s:.1f} |" for s in report.systems]
    if report.training:
        out += ["", "## Training", ""] + [f"- {k}: {v}" for k, v in report.training.items()]
    for system in report.systems[1:]:
        out += _changed_examples(report, system)
    return "\n".join(out) + "\n"


def _changed_examples(report: EvalReport, system: SystemResult, limit: int = 5) -> list[str]:
    base = report.system(BASE)
    changes = sorted(
        zip(report.examples, base.predictions, system.predictions, base.example_scores, system.example_scores),
        key=lambda row: abs(row[4] - row[3]),
        reverse=True,
    )
    fixed = [(e, before, after) for e, before, after, was, now in changes if now > was]
    broke = [(e, before, after) for e, before, after, was, now in changes if now < was]
    out: list[str] = []
    for title, items in ((f"Examples {system.name} fixed", fixed), (f"Examples {system.name} broke", broke)):
        out += ["", f"## {title} ({len(items)} in all)", ""]
        out += [f"- `{e.where}`: {json.dumps(_shown_input(e)[-160:])} → reference {e.reference!r:.120}, "
                f"base {_shown(b)!r:.120}, {system.name} {_shown(a)!r:.120}" for e, b, a in items[:limit]] or ["- none"]
    return out


def _shown_input(example: Example) -> str:
    return example.messages[-2]["content"] if example.messages else example.prompt


def _shown(prediction: Any) -> Any:
    return prediction["reply"] if isinstance(prediction, dict) and "reply" in prediction else prediction


def prediction_rows(report: EvalReport) -> list[dict[str, Any]]:
    return [
        {"where": e.where, "input": list(e.messages) if e.messages else e.prompt, "reference": e.reference,
         **{s.name: s.predictions[i] for s in report.systems}}
        for i, e in enumerate(report.examples)
    ]


def write_plots(report: EvalReport, summary: dict[str, Any], out: Path, train_log: Path | None) -> list[Path]:
    """PNG plots: loss curves from the training log, metric bars with CI whiskers, confusion matrices."""
    written = [plots.metric_bars(summary["systems"], out / "metrics.png", f"{report.task} on {report.split} ({len(report.examples)} examples)")]
    if train_log is not None:
        written.append(plots.loss_curves(train_log, out / "loss_curves.png"))
    for system in report.systems:
        if system.confusion:
            labels, matrix = system.confusion
            written.append(plots.confusion_matrix(labels, matrix, f"{system.name}: confusion on {report.split}", out / f"confusion_{system.name}.png"))
    return [path for path in written if path is not None]


def write_reports(report: EvalReport, out: Path, *, train_log: Path | None = None) -> list[Path]:
    """metrics.json, predictions.jsonl, report.md and the plots, each written atomically."""
    out.mkdir(parents=True, exist_ok=True)
    summary = to_json(report)
    images = write_plots(report, summary, out, train_log)
    runs.write_json(out / "metrics.json", summary)
    runs.write_jsonl(out / "predictions.jsonl", prediction_rows(report))
    markdown = render_markdown(report) + "\n## Plots\n\n" + "".join(f"![{p.stem}]({p.name})\n" for p in images)
    runs.write_text(out / "report.md", markdown)
    return [out / "metrics.json", out / "predictions.jsonl", out / "report.md", *images]

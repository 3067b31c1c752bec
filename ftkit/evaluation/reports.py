"""What an evaluation leaves behind: metrics.json (a stable schema), the terminal table, report.md
with the examples an adapter fixed and broke, predictions.jsonl and the plots.

What an example and a prediction look like in a report is the task's to say (`Task.shown_input`,
`shown_prediction`, `recorded_input`); nothing here knows any task.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ftkit import runs
from ftkit.evaluation import plots
from ftkit.evaluation.evaluator import BASE, EvalReport, SystemResult
from ftkit.evaluation.stats import Interval, format_interval

SCHEMA = "ftkit.metrics/1"


def to_json(report: EvalReport) -> dict[str, Any]:
    """The stable, documented schema of metrics.json (see README, "metrics.json")."""
    return {
        "schema": SCHEMA,
        "task": report.task.name,
        "split": report.split,
        "examples": len(report.examples),
        "sample": _sample_json(report),
        "truncation": _truncation_json(report),
        "warnings": report.warnings,
        "primary_metric": report.metric_names[0],
        "confidence": 0.95,
        "bootstrap_resamples": report.resamples,
        "systems": {
            s.name: {
                "metrics": {m: _interval_json(i) for m, i in s.metrics.items()},
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


def _interval_json(interval: Interval) -> dict[str, Any]:
    """value, ci_low, ci_high (null when the sample is too small for this metric's interval) and ci_method."""
    low, high = (interval.low, interval.high) if interval.available else (None, None)
    return {"value": interval.point, "ci_low": low, "ci_high": high, "ci_method": interval.method}


def _sample_json(report: EvalReport) -> dict[str, Any] | None:
    sample = report.sample
    if sample is None:
        return None
    return {
        "examples": len(sample.examples),
        "of_rows": sample.total,
        "stratified": sample.stratified,
        "seed": sample.seed,
        "description": sample.describe(),
    }


def _truncation_json(report: EvalReport) -> dict[str, Any] | None:
    cut = report.truncation
    if cut is None:
        return None
    return {
        "examples": cut.count,
        "of": cut.total,
        "share": round(cut.share, 4),
        "where": cut.where,
        "fits_max_length": cut.fits,
    }


def _fmt(interval: Interval) -> str:
    return format_interval(interval.point, interval.low, interval.high)


def _notes(report: EvalReport) -> list[str]:
    """The lines every report carries above its numbers: the sample, truncation, warnings, intervals that are none."""
    notes = [f"examples: {report.sample.describe()}"] if report.sample else []
    if report.truncation is not None:
        notes.append(report.truncation.describe())
    notes += [f"WARNING: {warning}" for warning in report.warnings]
    missing = sorted({m for s in report.systems for m, i in s.metrics.items() if not i.available})
    if missing:
        notes.append(
            f"no confidence interval for {', '.join(missing)}: the sample is too small for that metric's interval "
            "(the bootstrap interval would not contain its own estimate); evaluate on more examples"
        )
    return notes


def render_table(report: EvalReport) -> str:
    """Plain-text table for the terminal: each system's metrics with 95 % CIs, then the comparisons."""
    names = [s.name for s in report.systems]
    width = max(24, *(len(n) + 2 for n in names))
    first = max(12, *(len(m) + 2 for m in report.metric_names))  # metric names such as field:order_id
    lines = [f"held-out {report.split}: {len(report.examples)} examples, task {report.task.name} (95% bootstrap CI)"]
    lines += _notes(report)
    lines.append(f"{'metric':<{first}}" + "".join(f"{n:<{width}}" for n in names))
    for metric in report.metric_names:
        lines.append(f"{metric:<{first}}" + "".join(f"{_fmt(s.metrics[metric]):<{width}}" for s in report.systems))
    for c in report.comparisons:
        verdict = "significant" if c.significant else "NOT significant"
        lines.append(
            f"{c.system} vs base, {c.metric}: {c.difference:+.3f} (p = {c.p_value:.3g}, {c.test}; {verdict} at 0.05)"
        )
    return "\n".join(lines)


def render_markdown(report: EvalReport) -> str:
    """report.md: the table with CIs, significance in words, and examples the adapter fixed and broke."""
    names = [s.name for s in report.systems]
    out = [f"# Evaluation: {report.task.name} on {report.split}", ""]
    out.append(
        f"{len(report.examples)} held-out examples. Values with 95 % bootstrap confidence intervals "
        f"({report.resamples} resamples, seed 0; percentile for means, BCa for corpus metrics)."
    )
    out += [""] + [f"- {note}" for note in _notes(report)]
    out += ["", "| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for metric in report.metric_names:
        out.append(f"| {metric} | " + " | ".join(_fmt(s.metrics[metric]) for s in report.systems) + " |")
    out += ["", "## Is the adapter better?", ""]
    for c in report.comparisons:
        if c.significant:
            word = "better" if c.improved else "worse"
            out.append(
                f"- **{c.system}** is {word} than the base on {c.metric} by {c.difference:+.3f} "
                f"(p = {c.p_value:.3g}, {c.test})."
            )
        else:
            out.append(
                f"- **{c.system}** vs base on {c.metric}: {c.difference:+.3f}, **not significant** "
                f"(p = {c.p_value:.3g}, {c.test}); "
                "this difference could be noise."
            )
    out += ["", "| system | eval time (s) | examples/s |", "|---|---|---|"]
    out += [f"| {s.name} | {s.seconds:.1f} | {s.examples_per_s:.1f} |" for s in report.systems]
    if report.training:
        out += ["", "## Training", ""] + [f"- {k}: {v}" for k, v in report.training.items()]
    for system in report.systems[1:]:
        out += _changed_examples(report, system)
    return "\n".join(out) + "\n"


def _changed_examples(report: EvalReport, system: SystemResult, limit: int = 5) -> list[str]:
    base, task = report.system(BASE), report.task
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
        out += [
            f"- `{e.where}`: {json.dumps(task.shown_input(e)[-160:])} → reference {e.reference!r:.120}, "
            f"base {task.shown_prediction(b)!r:.120}, {system.name} {task.shown_prediction(a)!r:.120}"
            for e, b, a in items[:limit]
        ] or ["- none"]
    return out


def prediction_rows(report: EvalReport) -> list[dict[str, Any]]:
    """One row per example: its input, reference and each system's prediction, and under "scores" the
    per-example values that rank report.md's fixed and broken examples, so that a reader (`ftkit ui`)
    can tell them apart without knowing the task."""
    return [
        {
            "where": e.where,
            "input": report.task.recorded_input(e),
            "reference": e.reference,
            **{s.name: s.predictions[i] for s in report.systems},
            "scores": {s.name: s.example_scores[i] for s in report.systems if s.example_scores},
        }
        for i, e in enumerate(report.examples)
    ]


def write_plots(report: EvalReport, summary: dict[str, Any], out: runs.RunDir, train_log: Path | None) -> list[Path]:
    """PNG plots: loss curves from the training log, metric bars with CI whiskers, confusion matrices."""
    title = f"{report.task.name} on {report.split} ({len(report.examples)} examples)"
    written: list[Path | None] = [plots.metric_bars(summary["systems"], out.metrics_plot, title)]
    if train_log is not None:
        written.append(plots.loss_curves(train_log, out.loss_plot))
    for system in report.systems:
        if system.confusion:
            labels, matrix = system.confusion
            written.append(
                plots.confusion_matrix(
                    labels, matrix, f"{system.name}: confusion on {report.split}", out.confusion_plot(system.name)
                )
            )
    return [path for path in written if path is not None]


def write_reports(report: EvalReport, folder: Path, *, train_log: Path | None = None) -> list[Path]:
    """metrics.json, predictions.jsonl, report.md and the plots, each written atomically."""
    out = runs.RunDir(folder)
    folder.mkdir(parents=True, exist_ok=True)
    then = "the reports written before are intact; free space, then evaluate again (ftkit eval RECIPE --adapter ...)"
    with runs.disk_guard(folder, REPORT_BYTES, then):
        return _write_all(report, out, train_log)


REPORT_BYTES = 2 * 1024 * 1024  # metrics.json, predictions.jsonl, report.md and a few PNGs: an upper guess


def _write_all(report: EvalReport, out: runs.RunDir, train_log: Path | None) -> list[Path]:
    summary = to_json(report)
    images = write_plots(report, summary, out, train_log)
    runs.write_json(out.metrics, summary)
    runs.write_jsonl(out.predictions, prediction_rows(report))
    markdown = render_markdown(report) + "\n## Plots\n\n" + "".join(f"![{p.stem}]({p.name})\n" for p in images)
    runs.write_text(out.report, markdown)
    return [out.metrics, out.predictions, out.report, *images]

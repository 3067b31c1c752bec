"""PNG plots of a run: loss curves, a confusion matrix, and metric bars with confidence intervals.

Rendering uses matplotlib's `Figure` with the Agg canvas directly, never `pyplot`, so importing
this module changes no global matplotlib state (backend, open figures) for anyone else in the
process. Each PNG is rendered in memory and written atomically (temporary sibling + rename), so
a crash never leaves a half-written image that looks complete.
"""

from __future__ import annotations

import io
import json
import math
import numbers
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ftkit.runs import RunDir, write_bytes

DPI = 120
CI_LABEL = "score (95% CI)"


def _figure(width: float, height: float) -> Figure:
    """A figure with its own Agg canvas and constrained layout (labels are never cut off)."""
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, out: Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    write_bytes(out, buffer.getvalue())
    return out


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _log_rows(train_log: Path) -> list[dict[str, Any]]:
    """The JSON objects of a train_log.jsonl; a line a crash left half-written is skipped."""
    rows = []
    for line in train_log.read_text(encoding="utf-8").splitlines() if train_log.is_file() else []:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and _finite(row.get("step")):
            rows.append(row)
    return rows


def read_losses(train_log: Path) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(training, validation) as (optimizer step, loss) pairs from a run's train_log.jsonl.

    The final summary row (it has "train_loss") is skipped, as are non-finite losses and a line a
    crash left half-written. A missing log reads as no rows.
    """
    rows = [row for row in _log_rows(train_log) if "train_loss" not in row]
    train = [(int(row["step"]), float(row["loss"])) for row in rows if _finite(row.get("loss"))]
    validation = [(int(row["step"]), float(row["eval_loss"])) for row in rows if _finite(row.get("eval_loss"))]
    return train, validation


def read_kept(train_log: Path) -> dict[str, Any] | None:
    """The run's kept.json beside its train_log.jsonl (which step's adapter was kept, by which metric), if any."""
    try:
        kept = json.loads(RunDir(train_log.parent).kept.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return kept if isinstance(kept, dict) and _finite(kept.get("step")) else None


def read_metric(train_log: Path, metric: str) -> list[tuple[int, float]]:
    """(step, value) of the in-training validation metric (`eval_<metric>` rows), the last row per step: a
    resumed run logs again the steps after its checkpoint."""
    key = f"eval_{metric}"
    by_step = {int(row["step"]): float(row[key]) for row in _log_rows(train_log) if _finite(row.get(key))}
    return sorted(by_step.items())


def loss_curves(train_log: Path, out: Path) -> Path | None:
    """Plot training and validation loss against optimizer step from runs/<name>/train_log.jsonl and, when
    the run computed the task's metric during training (kept.json names it), the validation metric below,
    with the step whose adapter the run kept marked on both.

    Returns `out`, or None (and writes nothing) when the log is missing or holds no loss rows.
    """
    train, validation = read_losses(train_log)
    if not train and not validation:
        return None
    kept = read_kept(train_log)
    metric = kept.get("metric") if kept else None
    curve = read_metric(train_log, metric) if isinstance(metric, str) else []
    fig = _figure(7.0, 6.6 if curve else 4.2)
    axes = fig.subplots(2 if curve else 1, 1, sharex=True, squeeze=False)[:, 0]
    ax = axes[0]
    for rows, label, style in ((train, "training loss", "-"), (validation, "validation loss", "--")):
        if rows:
            steps, losses = zip(*rows)
            ax.plot(steps, losses, style, marker="o", markersize=3.5, linewidth=1.6, label=label)
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(f"Loss: {train_log.parent.name or train_log.name}")
    if curve:
        steps, values = zip(*curve)
        axes[1].plot(steps, values, "-", marker="o", markersize=3.5, linewidth=1.6, color="C2", label=metric)
        axes[1].set_ylabel(f"validation {metric}")
        axes[1].set_title(f"Validation {metric} during training")
    if kept is not None:
        for each in axes:
            each.axvline(kept["step"], color="0.3", linestyle=":", linewidth=1.4, label=f"kept: step {kept['step']}")
    for each in axes:
        each.grid(True, alpha=0.3)
        each.legend()
    axes[-1].set_xlabel("optimizer step")
    return _save(fig, out)


def confusion_matrix(labels: list[str], matrix: list[list[int]], title: str, out: Path) -> Path:
    """Plot a confusion matrix: rows are the reference label, columns the predicted label.

    Each cell is annotated with its count. Raises ValueError when `matrix` is not
    len(labels) x len(labels).
    """
    n = len(labels)
    if n == 0:
        raise ValueError("confusion matrix: no labels given")
    if len(matrix) != n or any(len(row) != n for row in matrix):
        widths = "/".join(str(w) for w in sorted({len(row) for row in matrix})) or "0"
        raise ValueError(
            f"confusion matrix has {len(matrix)} rows of {widths} cells but there are {n} labels "
            f"({', '.join(labels)}); expected {n}x{n} (rows = reference, columns = predicted)"
        )
    if any(not isinstance(c, numbers.Integral) or c < 0 for row in matrix for c in row):
        raise ValueError("confusion matrix: every cell must be a count (an integer >= 0)")
    side = min(max(3.6, 1.0 + 0.7 * n), 14.0)
    fig = _figure(side + 1.2, side)
    ax = fig.add_subplot()
    image = ax.imshow(matrix, cmap="Blues", vmin=0)
    fig.colorbar(image, ax=ax, shrink=0.8, label="examples")
    slanted = max(map(len, labels)) * n > 36  # horizontal labels would collide
    ax.set_xticks(range(n), labels, rotation=45 if slanted else 0, ha="right" if slanted else "center")
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("predicted label (columns)")
    ax.set_ylabel("reference label (rows)")
    ax.set_title(title)
    peak = max((max(row) for row in matrix), default=0)
    fontsize = 11 if n <= 8 else 8
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            dark = peak > 0 and count > peak / 2
            ax.text(j, i, str(count), ha="center", va="center", fontsize=fontsize, color="white" if dark else "black")
    return _save(fig, out)


def _metric_order(systems: Mapping[str, Mapping[str, Any]]) -> list[str]:
    order: list[str] = []
    for system in systems.values():
        order += [m for m in system.get("metrics", {}) if m not in order]
    return order


def _or(value: Any, default: float) -> Any:
    return default if value is None else value


def _bars(ax: Any, systems: Mapping[str, Mapping[str, Any]], metrics: list[str]) -> None:
    """Grouped bars on one axes: a group per metric, a bar per system, asymmetric CI whiskers."""
    count = len(systems)
    width = 0.8 / count
    for k, (name, system) in enumerate(systems.items()):
        xs, values, below, above = [], [], [], []
        for i, metric in enumerate(metrics):
            interval = system.get("metrics", {}).get(metric)
            if not interval or not _finite(interval.get("value")):
                continue
            value = float(interval["value"])
            low = float(_or(interval.get("ci_low"), value))  # null: no interval (sample too small)
            high = float(_or(interval.get("ci_high"), value))
            xs.append(i - 0.4 + width * (k + 0.5))
            values.append(value)
            below.append(max(0.0, value - low))
            above.append(max(0.0, high - value))
        bars = ax.bar(
            xs,
            values,
            width * 0.92,
            yerr=[below, above],
            capsize=4,
            label=name,
            error_kw={"elinewidth": 1.2, "ecolor": "0.2"},
        )
        ax.bar_label(
            bars,
            labels=[f"{v:.3g}" for v in values],
            padding=2,
            fontsize=8,
            label_type="center",
            color="white",
            fontweight="bold",
        )
    ax.set_xticks(range(len(metrics)), metrics)
    ax.set_ylabel(CI_LABEL)
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_axisbelow(True)


def metric_bars(systems: Mapping[str, Mapping[str, Any]], out: Path, title: str) -> Path:
    """Plot grouped bars with 95 % CI whiskers from the "systems" mapping of a metrics.json.

    `systems` is {system: {"metrics": {metric: {"value", "ci_low", "ci_high"}}, ...}}. Metrics that
    all lie in 0..1 share one axes (0..1); a metric on another scale (chrF 0..100, perplexity)
    gets its own panel so it does not flatten the others.
    """
    if not systems:
        raise ValueError("metric bars: no systems given")
    metrics = _metric_order(systems)
    if not metrics:
        raise ValueError(f"metric bars: systems {', '.join(systems)} have no metrics")

    def unit(metric: str) -> bool:
        bounds = [
            float(v)
            for s in systems.values()
            for k, v in s.get("metrics", {}).get(metric, {}).items()
            if k in ("value", "ci_low", "ci_high") and _finite(v)
        ]
        return all(0.0 <= b <= 1.0 for b in bounds)

    panels = [[m for m in metrics if unit(m)]] if any(unit(m) for m in metrics) else []
    panels += [[m] for m in metrics if not unit(m)]
    width = max(5.0, sum(1.2 + 0.35 * len(systems) * len(p) for p in panels) + 1.5)
    fig = _figure(min(width, 16.0), 4.6)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for index, (ax, panel) in enumerate(zip(axes, panels)):
        _bars(ax, systems, panel)
        if all(unit(m) for m in panel):
            ax.set_ylim(0, 1.05)
        if len(panels) > 1 and index > 0:
            ax.set_ylabel("")
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncols=min(len(names), 4), frameon=False)
    fig.suptitle(title)
    return _save(fig, out)

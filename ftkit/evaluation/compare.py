"""Side by side: several finished runs in one plain-text table.

Each run directory contributes its `metrics.json` (schema `ftkit.metrics/1`, written by
`ftkit train` or `ftkit eval`) and its `recipe.yaml` (the fully resolved recipe), so that runs
that differ in one setting — LoRA rank, 4-bit vs 8-bit, learning rate — can be read against
each other: held-out primary metric of base and adapter with confidence intervals, the paired
test's difference and p-value, and the training cost.
"""

from __future__ import annotations

import difflib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

import yaml

from ftkit.errors import FtkitError
from ftkit.evaluation.stats import format_interval
from ftkit.runs import RunDir

SCHEMA = "ftkit.metrics/1"
BASE = "base"
ALPHA = 0.05


class CompareError(FtkitError):
    """A run directory that cannot be compared (missing, or without a valid metrics.json)."""


@dataclass
class Run:
    """One run as read from disk: its metrics.json and (when present) its resolved recipe."""

    given: Path
    metrics_path: Path
    metrics: dict[str, Any]
    recipe: dict[str, Any]
    label: str = ""

    @property
    def adapters(self) -> list[str]:
        return [name for name in self.metrics["systems"] if name != BASE]

    @property
    def evaluated_on(self) -> tuple[str, str, int]:
        return (str(self.metrics.get("task")), str(self.metrics.get("split")), int(self.metrics.get("examples") or 0))

    def setting(self, section: str, key: str) -> Any:
        value = self.recipe.get(section)
        return value.get(key) if isinstance(value, dict) else None


# --- reading runs -------------------------------------------------------------------------------


def _first_step(run_dir: Path) -> str:
    """What to run so that RUN_DIR gets a metrics.json."""
    run = RunDir(run_dir)
    if run.adapter.is_dir():
        source = str(run.recipe) if run.recipe.is_file() else "RECIPE"
        return (
            f"run `ftkit eval {source} --adapter {run.adapter} --out {run.eval.path}` first "
            "(it was trained without evaluation)"
        )
    return "run `ftkit train RECIPE` (or `ftkit eval RECIPE --adapter DIR`) first"


def _missing_dir(path: Path) -> CompareError:
    hint = ""
    parent = path.parent if str(path.parent) else Path(".")
    if parent.is_dir():
        siblings = sorted(p.name for p in parent.iterdir() if p.is_dir() and not p.name.startswith("."))
        close = difflib.get_close_matches(path.name, siblings, n=3)
        if close:
            hint = f" (did you mean {', '.join(str(parent / c) for c in close)}?)"
        elif siblings and len(siblings) <= 8:
            hint = f" ({parent} holds: {', '.join(siblings)})"
    return CompareError(f"{path}: no such run directory{hint}; run `ftkit train RECIPE` first, it writes runs/<name>/")


def _metrics_file(path: Path) -> Path:
    """RUN_DIR/metrics.json, else RUN_DIR/eval/metrics.json (where `ftkit eval` writes); a .json file as given."""
    if path.is_file() and path.suffix == ".json":
        return path
    if not path.is_dir():
        raise _missing_dir(path)
    for candidate in (RunDir(path).metrics, RunDir(path).eval.metrics):
        if candidate.is_file():
            return candidate
    raise CompareError(f"{path}: no metrics.json; {_first_step(path)}")


def _check_metrics(path: Path, data: Any) -> dict[str, Any]:
    redo = "re-run `ftkit eval` (or `ftkit train`) to write it again"
    if not isinstance(data, dict):
        raise CompareError(f"{path}: not a metrics.json (expected a JSON object); {redo}")
    if data.get("schema") != SCHEMA:
        raise CompareError(f"{path}: schema {data.get('schema')!r}, expected {SCHEMA!r}; {redo}")
    systems = data.get("systems")
    if not isinstance(systems, dict) or BASE not in systems:
        raise CompareError(f"{path}: no '{BASE}' system in \"systems\"; {redo}")
    if len(systems) < 2:
        raise CompareError(f"{path}: only the base model was evaluated, no adapter; {redo}")
    if not isinstance(data.get("examples"), int) or isinstance(data.get("examples"), bool):
        raise CompareError(f'{path}: "examples" must be a number of examples; {redo}')
    primary = data.get("primary_metric")
    for name, system in systems.items():
        metrics = system.get("metrics") if isinstance(system, dict) else None
        if not isinstance(metrics, dict) or primary not in metrics:
            raise CompareError(f"{path}: system {name!r} has no value for the primary metric {primary!r}; {redo}")
        for metric, interval in metrics.items():
            if not isinstance(interval, dict) or not all(
                _numeric(interval.get(k)) or (k != "value" and interval.get(k) is None)
                for k in ("value", "ci_low", "ci_high")
            ):
                raise CompareError(
                    f"{path}: system {name!r}, metric {metric!r}: expected value, ci_low and ci_high; {redo}"
                )
    if not isinstance(data.get("comparisons", []), list) or not isinstance(data.get("training") or {}, dict):
        raise CompareError(f'{path}: malformed "comparisons" or "training"; {redo}')
    return data


def _recipe(metrics_path: Path) -> dict[str, Any]:
    """The run's resolved recipe: beside metrics.json, or one level up for RUN_DIR/eval/metrics.json."""
    for candidate in (RunDir(metrics_path.parent).recipe, RunDir(metrics_path.parent.parent).recipe):
        if candidate.is_file():
            try:
                data = yaml.safe_load(candidate.read_text(encoding="utf-8"))
            except (yaml.YAMLError, UnicodeDecodeError):
                return {}
            return data if isinstance(data, dict) else {}
    return {}


def load_run(path: Path) -> Run:
    """Read one run directory (or a metrics.json file), or raise CompareError saying what to run first."""
    path = Path(path)
    metrics_path = _metrics_file(path)
    try:
        data = json.loads(metrics_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CompareError(
            f"{metrics_path}: not valid JSON ({error}); re-run `ftkit eval` (or `ftkit train`) to write it again"
        ) from None
    return Run(
        given=path, metrics_path=metrics_path, metrics=_check_metrics(metrics_path, data), recipe=_recipe(metrics_path)
    )


def _labels(paths: list[Path]) -> list[str]:
    """The shortest trailing path that tells runs apart: runs/a, runs/b -> a, b; a/eval, b/eval -> a/eval, b/eval."""
    parts = [p.resolve().parts[1:] or (str(p),) for p in paths]
    longest = max(len(p) for p in parts)
    for k in range(1, longest + 1):
        labels = ["/".join(p[-k:]) for p in parts]
        if len(set(labels)) == len(set(map(tuple, parts))):
            return labels
    return ["/".join(p) for p in parts]


# --- formatting ---------------------------------------------------------------------------------


def _numeric(value: object) -> TypeGuard[float]:
    """A JSON number (NaN included: a degenerate interval is shown, not refused)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number(value: object) -> TypeGuard[float]:
    """A finite JSON number."""
    return _numeric(value) and math.isfinite(value)


def _interval(run: Run, system: str, metric: str) -> str:
    interval = run.metrics["systems"][system]["metrics"].get(metric)
    if not interval:
        return "-"
    return format_interval(interval["value"], interval["ci_low"], interval["ci_high"])


def _comparison(run: Run, system: str, metric: str) -> tuple[str, str, str]:
    """(difference, p-value, significant) of SYSTEM vs base on METRIC, '-' where not recorded."""
    for c in run.metrics.get("comparisons", []):
        if (
            isinstance(c, dict)
            and c.get("system") == system
            and c.get("metric") == metric
            and c.get("baseline", BASE) == BASE
        ):
            difference = f"{c['difference']:+.3f}" if _number(c.get("difference")) else "-"
            p = c.get("p_value")
            if not _number(p):
                return difference, "-", "-"
            significant = c.get("significant", p < ALPHA)
            return difference, f"{p:.3g}", "yes" if significant else "no"
    return "-", "-", "-"


def _fmt(value: Any, spec: str = "") -> str:
    if value is None:
        return "-"
    if spec and _number(value):
        return format(value, spec)
    return str(value)


def _length(run: Run) -> str:
    steps, epochs = run.setting("train", "max_steps"), run.setting("train", "epochs")
    if steps is not None:
        return f"{steps} steps"
    return f"{epochs:g} epochs" if _number(epochs) else "-"


# Settings shown only when the compared runs differ in them (quantization and r are always shown).
OPTIONAL_SETTINGS: list[tuple[str, Any]] = [
    ("alpha", lambda run: _fmt(run.setting("adapter", "alpha"), "g")),
    ("lr", lambda run: _fmt(run.setting("train", "learning_rate"), "g")),
    ("train for", _length),
]

RIGHT = {"r", "alpha", "lr", "examples", "difference", "p-value", "train s", "peak MB"}


def _table(header: list[str], rows: list[list[str]], indent: str = "") -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]

    def line(cells: list[str]) -> str:
        return (
            indent
            + "  ".join(c.rjust(w) if h in RIGHT else c.ljust(w) for c, w, h in zip(cells, widths, header)).rstrip()
        )

    return [line(header), *(line(r) for r in rows)]


def compare_runs(run_dirs: list[Path]) -> str:
    """A plain-text table of several runs: one row per run (per adapter, if a run evaluated several).

    Columns: run, quantization, LoRA r (plus alpha, learning rate and training length when the
    runs differ in them), split, examples, the primary metric for base and adapter with 95 % CIs,
    adapter - base difference, p-value of the paired test, significant at 0.05, and the
    "training" block's wall seconds and peak RSS. Other metrics are listed below the table. Runs
    evaluated on different tasks, splits or numbers of examples get a warning line: their
    numbers are not comparable. Raises CompareError for a missing run or metrics.json.
    """
    if not run_dirs:
        raise CompareError("no run directories given; e.g. ftkit compare runs/r8 runs/r16")
    runs = [load_run(Path(p)) for p in run_dirs]
    for run, label in zip(runs, _labels([r.given for r in runs])):
        run.label = label

    primaries = [r.metrics["primary_metric"] for r in runs]
    mixed_metrics = len(set(primaries)) > 1
    confidence = runs[0].metrics.get("confidence", 0.95)
    ci = f"{confidence:.0%} CI" if _number(confidence) else "CI"
    shown = [(name, get) for name, get in OPTIONAL_SETTINGS if len({get(r) for r in runs}) > 1]

    header = ["run", "quant", "r", *(name for name, _ in shown), "split", "examples"]
    header += (
        ["metric", f"base [{ci}]", f"adapter [{ci}]"]
        if mixed_metrics
        else [f"base {primaries[0]} [{ci}]", f"adapter {primaries[0]} [{ci}]"]
    )
    header += ["difference", "p-value", "significant", "train s", "peak MB"]

    rows: list[list[str]] = []
    others: list[list[str]] = []
    for run, primary in zip(runs, primaries):
        training = run.metrics.get("training") or {}
        for system in run.adapters:
            name = run.label if len(run.adapters) == 1 else f"{run.label}: {system}"
            row = [name, _fmt(run.setting("model", "quantization")), _fmt(run.setting("adapter", "r"))]
            row += [get(run) for _, get in shown]
            row += [str(run.metrics.get("split", "-")), _fmt(run.metrics.get("examples"))]
            row += [primary] if mixed_metrics else []
            row += [_interval(run, BASE, primary), _interval(run, system, primary), *_comparison(run, system, primary)]
            row += [_fmt(training.get("train_wall_s"), ".1f"), _fmt(training.get("peak_rss_mb"), ".0f")]
            rows.append(row)
            for metric in run.metrics["systems"][system]["metrics"]:
                if metric != primary:
                    others.append(
                        [
                            name,
                            metric,
                            _interval(run, BASE, metric),
                            _interval(run, system, metric),
                            *_comparison(run, system, metric),
                        ]
                    )

    title = "primary metric: " + (", ".join(dict.fromkeys(primaries)) if mixed_metrics else primaries[0])
    lines = [f"{title} (held out; difference = adapter - base, p-value of the paired test, significant at {ALPHA})"]
    lines += _table(header, rows)
    if others:
        lines += ["", "other metrics:"]
        lines += _table(
            ["run", "metric", f"base [{ci}]", f"adapter [{ci}]", "difference", "p-value", "significant"], others, "  "
        )
    if len({r.evaluated_on for r in runs}) > 1:
        seen = "; ".join(f"{r.label}: {t}/{s}, {n} examples" for r, (t, s, n) in ((r, r.evaluated_on) for r in runs))
        lines += [
            "",
            f"warning: these runs were evaluated on different tasks, splits or examples ({seen}); "
            "their numbers are not comparable",
        ]
    return "\n".join(lines)

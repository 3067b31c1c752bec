"""The runs under one root folder, each summarised from the few small files that say what it is.

A run directory is any folder holding a `recipe.yaml` (the first file `ftkit train` writes); it may
sit at any depth below the root (`sweeps/<name>/trials/003/` is found like `runs/a/`), and the
search does not descend into a run's own folders. A summary reads `metrics.json`, `recipe.yaml`,
the last few KB of `train_log.jsonl` and the lock beside the run; never `predictions.jsonl`, so
the list stays quick with hundreds of runs. Summaries are cached per file sizes and mtimes.

A run's state, from the lock and the files:
  running      another process holds the run's lock (`runs.locked`)
  finished     the adapter is saved (`adapter/manifest.json`, written last)
  interrupted  no adapter, not running, and either stopped by the user (exit 130) or a checkpoint is
               left to `--resume` from
  failed       no adapter, not running, and the launcher saw another exit code, or nothing to resume
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ftkit.runs import MANIFEST, RunDir

State = Literal["running", "finished", "interrupted", "failed"]
TAIL_BYTES = 8192
SKIPPED = {"adapter", "checkpoints", "eval", "node_modules", "__pycache__"}


@dataclass(frozen=True)
class Interval:
    value: float
    low: float | None
    high: float | None


@dataclass
class RunSummary:
    """What the runs page shows of one run."""

    rel: str  # the run's path below the root, with '/': its id in every URL
    state: State
    name: str
    task: str = "-"
    model: str = "-"
    quantization: str = "-"
    steps: int | None = None
    max_steps: int | None = None
    primary: str | None = None
    base: Interval | None = None
    adapter: Interval | None = None
    p_value: float | None = None
    significant: bool | None = None
    modified: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def difference(self) -> float | None:
        return self.adapter.value - self.base.value if self.adapter and self.base else None


def lock_path(run: RunDir) -> Path:
    """Where `runs.locked` keeps the run's lock: beside the run directory."""
    return run.path.parent / f".{run.path.name}.lock"


def is_running(run: RunDir) -> bool:
    """True while another process holds the run's lock. The lock file is only opened for reading,
    never created: the UI must not leave files in a runs folder it merely looks at."""
    try:
        handle = open(lock_path(run), "rb")  # noqa: SIM115 - closed below, whatever flock does
    except OSError:
        return False
    try:
        fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        handle.close()
    return False


def find_runs(root: Path) -> Iterator[Path]:
    """Every run directory below `root` (symlinked folders are not followed), in sorted order."""
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = [s for s in sorted(subfolders) if s not in SKIPPED and not s.startswith(".")]
        if RunDir.recipe.name in files and Path(folder) != root:
            yield Path(folder)


def tail_rows(path: Path, limit: int = TAIL_BYTES) -> list[dict[str, Any]]:
    """The JSON rows in the last `limit` bytes of a JSONL file (the first, partial line dropped)."""
    try:
        with path.open("rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - limit))
            chunk = handle.read()
    except OSError:
        return []
    lines = chunk.split(b"\n")
    if size > limit:
        lines = lines[1:]
    rows = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from a file, or None when it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_recipe(run: RunDir) -> dict[str, Any]:
    """The run's resolved recipe as plain data ({} when unreadable)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        data = yaml.load(run.recipe.read_text(encoding="utf-8"), Loader=loader)  # noqa: S506 - a safe loader
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def interval_of(metrics: dict[str, Any], system: str, metric: str) -> Interval | None:
    """SYSTEM's METRIC in a metrics.json, or None where it is not recorded as a number."""
    value = ((metrics.get("systems") or {}).get(system) or {}).get("metrics", {}).get(metric)
    if not isinstance(value, dict) or not isinstance(value.get("value"), (int, float)):
        return None
    return Interval(float(value["value"]), value.get("ci_low"), value.get("ci_high"))


def exit_code_of(run: RunDir, launches: dict[str, int | None]) -> int | None:
    """The exit code the UI's launcher recorded for this run, if it started it (None while it runs)."""
    return launches.get(str(run.path.resolve()))


def state_of(run: RunDir, launches: dict[str, int | None]) -> State:
    launched_alive = str(run.path.resolve()) in launches and exit_code_of(run, launches) is None
    if launched_alive or is_running(run):  # a launched process is running before it takes the lock
        return "running"
    if (run.adapter / MANIFEST).is_file():
        return "finished"
    code = exit_code_of(run, launches)
    if code == 130 or (code is None and run.last_checkpoint() is not None):
        return "interrupted"
    return "failed"


def _section(recipe: dict[str, Any], name: str) -> dict[str, Any]:
    value = recipe.get(name)
    return value if isinstance(value, dict) else {}


def summarize(root: Path, path: Path, launches: dict[str, int | None]) -> RunSummary:
    """One run's summary, from its small files only."""
    run = RunDir(path)
    recipe = read_recipe(run)
    model, task, train = _section(recipe, "model"), _section(recipe, "task"), _section(recipe, "train")
    summary = RunSummary(
        rel=path.relative_to(root).as_posix(),
        state=state_of(run, launches),
        name=str(recipe.get("name") or path.name),
        task=str(task.get("name", "-")),
        model=str(model.get("source", "-")),
        quantization=str(model.get("quantization", "-")),
        max_steps=train.get("max_steps") if isinstance(train.get("max_steps"), int) else None,
        modified=_mtime(run),
    )
    steps = [row["step"] for row in tail_rows(run.train_log) if isinstance(row.get("step"), int)]
    summary.steps = steps[-1] if steps else None
    metrics = read_json(run.metrics) or read_json(run.eval.metrics)
    if metrics is not None:
        primary = metrics.get("primary_metric")
        summary.primary = str(primary)
        summary.base = interval_of(metrics, "base", str(primary))
        adapters = [name for name in metrics.get("systems") or {} if name != "base"]
        summary.adapter = interval_of(metrics, adapters[0], str(primary)) if adapters else None
        for c in metrics.get("comparisons") or []:
            if isinstance(c, dict) and c.get("metric") == primary and adapters and c.get("system") == adapters[0]:
                summary.p_value = c.get("p_value")
                summary.significant = bool(c.get("significant"))
    return summary


def _mtime(run: RunDir) -> float:
    times = [p.stat().st_mtime for p in (run.recipe, run.train_log, run.metrics) if p.exists()]
    return max(times, default=0.0)


class Catalog:
    """The runs below `root`, re-listed on every call, each summary cached while its files are unchanged."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self._cache: dict[Path, tuple[tuple[Any, ...], RunSummary]] = {}

    def runs(self, launches: dict[str, int | None] | None = None) -> list[RunSummary]:
        launches = launches or {}
        found = []
        for path in find_runs(self.root):
            key = self._key(RunDir(path), launches)
            cached = self._cache.get(path)
            if cached is None or cached[0] != key or key[-1]:  # a running run is summarised afresh
                cached = (key, summarize(self.root, path, launches))
                self._cache[path] = cached
            found.append(cached[1])
        return found

    @staticmethod
    def _key(run: RunDir, launches: dict[str, int | None]) -> tuple[Any, ...]:
        stamps: list[tuple[int, int] | None] = []
        for p in (run.recipe, run.train_log, run.metrics, run.eval.metrics, run.adapter / MANIFEST):
            try:
                stat = p.stat()
                stamps.append((stat.st_size, stat.st_mtime_ns))
            except OSError:
                stamps.append(None)
        return (*stamps, exit_code_of(run, launches), is_running(run))

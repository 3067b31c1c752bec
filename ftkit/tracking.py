"""Experiment tracking through the libraries that already do it: transformers' integration callbacks
(`train.report_to`: tensorboard, mlflow, wandb, or any name transformers knows) log the Trainer's loss,
learning rate, grad norm and validation metrics as training goes; this module opens each tracker's run
before training, so that ftkit can log into the same run what the Trainer does not know: the fully
resolved recipe as parameters, tokens/s and peak memory, the held-out metrics of base and adapter with
their CIs and p-values, the report, the plots and the adapter with its lineage manifest.

Nothing leaves the machine unless the recipe asks for it: TensorBoard writes `runs/<name>/tensorboard/`;
MLflow logs to `MLFLOW_TRACKING_URI`, by default a SQLite store beside the run directories
(`runs/mlflow.db`, artifacts in `runs/mlartifacts/`); W&B runs offline (`WANDB_MODE`, default offline) into
`runs/<name>/wandb/`. Each run's ids are kept in `runs/<name>/tracking.json`, so `--resume`, `ftkit eval
--report-to` and `ftkit compare --report-to` log to the same run. For other names only the Trainer's own
callback logs (ftkit's extras go to tensorboard, mlflow and wandb).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ftkit import lineage
from ftkit.errors import FtkitError
from ftkit.recipe import Recipe
from ftkit.runs import RunDir, write_json

INSTALL = "pip install 'ftkit[tracking]'"
PACKAGES = ("tensorboard", "mlflow", "wandb")  # what ftkit's tracking extra installs


class TrackingError(FtkitError):
    """A tracker that is unknown, not installed, or has no run to log to."""


def check(names: Sequence[str], where: str = "train.report_to") -> None:
    """Refuse, before anything is written, a tracker transformers does not know or whose package is missing."""
    from transformers.integrations.integration_utils import (
        INTEGRATION_TO_CALLBACK,
        get_available_reporting_integrations,
    )

    known, installed = sorted(INTEGRATION_TO_CALLBACK), get_available_reporting_integrations()
    for name in names:
        if name not in known:
            raise TrackingError(f"{where}: unknown tracker '{name}'; transformers knows {', '.join(known)}")
        if name not in installed:
            hint = INSTALL if name in PACKAGES else f"install the {name} package"
            raise TrackingError(f"{where}: '{name}' is not installed: {hint}")


def flat(value: Any, prefix: str = "") -> dict[str, Any]:
    """A nested mapping as dotted keys (`train.learning_rate`): how parameters are listed in a tracker."""
    if not isinstance(value, Mapping):
        return {prefix: value}
    out: dict[str, Any] = {}
    for key, child in value.items():
        out |= flat(child, f"{prefix}.{key}" if prefix else str(key))
    return out


def evaluation_metrics(summary: Mapping[str, Any]) -> dict[str, float]:
    """metrics.json as tracker metrics: `<split>.<system>.<metric>` with `.ci_low` / `.ci_high`, and
    `<split>.<system>_vs_base.<metric>.difference` / `.p_value`."""
    split, out = summary["split"], {}
    for system, result in summary["systems"].items():
        for metric, interval in result["metrics"].items():
            for field, suffix in (("value", ""), ("ci_low", ".ci_low"), ("ci_high", ".ci_high")):
                if isinstance(interval.get(field), (int, float)):
                    out[f"{split}.{system}.{metric}{suffix}"] = float(interval[field])
    for c in summary["comparisons"]:
        for field in ("difference", "p_value"):
            out[f"{split}.{c['system']}_vs_base.{c['metric']}.{field}"] = float(c[field])
    return out


class Tracker:
    """One tracker's run: what ftkit logs beside the Trainer's callback. The base class logs nothing."""

    name = ""

    def callback(self) -> Any:
        from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

        return INTEGRATION_TO_CALLBACK[self.name]()

    def ids(self) -> dict[str, Any]:
        return {}

    def params(self, values: Mapping[str, Any]) -> None:
        """Parameters (the resolved recipe, flattened)."""

    def tags(self, values: Mapping[str, str]) -> None:
        """Tags: the base model's fingerprint, the data hash."""

    def metrics(self, values: Mapping[str, float], step: int) -> None:
        """Numbers at a step (the final ones at the run's last step)."""

    def files(self, paths: Sequence[Path], folder: Path | None, under: str = "") -> None:
        """Files (reports, plots) and one folder (the adapter) as the run's artifacts, under a folder of them."""

    def text(self, name: str, text: str) -> None:
        """A text artifact (`ftkit compare`'s table)."""

    def close(self) -> None:
        """Flush and end the run (it can be reopened by its ids)."""


class TensorBoard(Tracker):
    name = "tensorboard"

    def __init__(self, run: RunDir, saved: Mapping[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.logdir = run.path / "tensorboard"
        self.writer = SummaryWriter(log_dir=str(self.logdir))

    def callback(self) -> Any:
        from transformers.integrations import TensorBoardCallback

        return TensorBoardCallback(tb_writer=self.writer)

    def ids(self) -> dict[str, Any]:
        return {"logdir": str(self.logdir)}

    def params(self, values: Mapping[str, Any]) -> None:
        table = "\n".join(f"| {key} | {value} |" for key, value in values.items())
        self.writer.add_text("ftkit/recipe", "| key | value |\n|---|---|\n" + table)

    def tags(self, values: Mapping[str, str]) -> None:
        self.writer.add_text("ftkit/lineage", "\n".join(f"- {k}: {v}" for k, v in values.items()))

    def metrics(self, values: Mapping[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key.replace(".", "/"), value, global_step=step)

    def text(self, name: str, text: str) -> None:
        self.writer.add_text(f"ftkit/{name}", f"<pre>{text}</pre>")

    def close(self) -> None:
        self.writer.close()


class MLflow(Tracker):
    name = "mlflow"

    def __init__(self, run: RunDir, saved: Mapping[str, Any]) -> None:
        import mlflow

        self.mlflow = mlflow
        root = run.path.resolve().parent
        uri = saved.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / 'mlflow.db'}"
        mlflow.set_tracking_uri(uri)
        if "run_id" in saved:
            active = mlflow.start_run(run_id=saved["run_id"])
        else:
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "ftkit")
            if mlflow.get_experiment_by_name(name) is None:
                local = uri.startswith("sqlite:") or uri.startswith("file:")
                mlflow.create_experiment(name, artifact_location=(root / "mlartifacts").as_uri() if local else None)
            mlflow.set_experiment(name)
            active = mlflow.start_run(run_name=run.path.name)
        self.run_id, self.uri = active.info.run_id, uri

    def ids(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "tracking_uri": self.uri}

    def params(self, values: Mapping[str, Any]) -> None:
        self.mlflow.log_params({key: str(value)[:6000] for key, value in values.items()})

    def tags(self, values: Mapping[str, str]) -> None:
        self.mlflow.set_tags(dict(values))

    def metrics(self, values: Mapping[str, float], step: int) -> None:
        self.mlflow.log_metrics(dict(values), step=step)

    def files(self, paths: Sequence[Path], folder: Path | None, under: str = "") -> None:
        for path in paths:
            self.mlflow.log_artifact(str(path), artifact_path=under or None)
        if folder is not None:
            self.mlflow.log_artifacts(str(folder), artifact_path=folder.name)

    def text(self, name: str, text: str) -> None:
        self.mlflow.log_text(text, name)

    def close(self) -> None:
        self.mlflow.end_run()


class WandB(Tracker):
    name = "wandb"

    def __init__(self, run: RunDir, saved: Mapping[str, Any]) -> None:
        import wandb

        self.wandb = wandb
        mode = os.environ.get("WANDB_MODE", "offline")  # offline unless the user says otherwise: nothing is sent
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "ftkit"),
            name=run.path.name,
            dir=str(run.path),
            mode=mode,  # type: ignore[arg-type]
            id=saved.get("id"),
            resume="allow",
        )

    def ids(self) -> dict[str, Any]:
        return {"id": self.run.id, "dir": str(Path(self.run.dir).parent)}

    def params(self, values: Mapping[str, Any]) -> None:
        self.run.config.update({"ftkit": dict(values)}, allow_val_change=True)

    def tags(self, values: Mapping[str, str]) -> None:
        self.run.config.update({"lineage": dict(values)}, allow_val_change=True)

    def metrics(self, values: Mapping[str, float], step: int) -> None:
        self.run.summary.update(dict(values))

    def files(self, paths: Sequence[Path], folder: Path | None, under: str = "") -> None:
        if folder is not None:
            artifact = self.wandb.Artifact(f"{self.run.name}-adapter", type="model")
            artifact.add_dir(str(folder))
            self.run.log_artifact(artifact)
        for path in paths:
            self.run.save(str(path), base_path=str(path.parent.parent if under else path.parent), policy="now")

    def text(self, name: str, text: str) -> None:
        self.run.summary[f"ftkit/{name}"] = text

    def close(self) -> None:
        self.run.finish()


KNOWN: dict[str, Callable[[RunDir, Mapping[str, Any]], Tracker]] = {
    "tensorboard": TensorBoard,
    "mlflow": MLflow,
    "wandb": WandB,
}


class Other(Tracker):
    """A tracker transformers knows and ftkit does not: only its Trainer callback logs."""

    def __init__(self, name: str) -> None:
        self.name = name


class Session:
    """The trackers of one run directory, opened together; their ids are written to `tracking.json`."""

    def __init__(self, run: RunDir, names: Sequence[str]) -> None:
        self.run = run
        saved = read_ids(run)
        self.trackers = [KNOWN[name](run, saved.get(name, {})) if name in KNOWN else Other(name) for name in names]
        if self.trackers:
            write_json(run.tracking, saved | {t.name: t.ids() for t in self.trackers if t.ids()})

    def callbacks(self) -> list[Any]:
        return [tracker.callback() for tracker in self.trackers]

    def each(self, method: str, *args: Any) -> None:
        for tracker in self.trackers:
            getattr(tracker, method)(*args)

    def log_recipe(self, recipe: Recipe) -> None:
        self.each("params", flat(recipe.model_dump(mode="json")))

    def log_training(self, training: Mapping[str, Any], adapter: Path) -> None:
        """tokens/s, peak memory and the rest of the training summary; the lineage as tags."""
        numbers = {f"ftkit.{k}": float(v) for k, v in training.items() if isinstance(v, (int, float))}
        self.each("metrics", numbers, int(training.get("steps", 0)))
        found = lineage.read(adapter)
        tags = {
            "ftkit.base_fingerprint": str(found.get("base_model", {}).get("fingerprint", "")),
            "ftkit.data_sha256": str(found.get("data_sha256", "")),
            "ftkit.kept_step": str(training.get("kept_step", "")),
        }
        self.each("tags", tags)

    def log_evaluation(self, summary: Mapping[str, Any], files: Sequence[Path], step: int, under: str = "") -> None:
        """Held-out metrics with CIs and p-values (`under.` before each name), and the reports and plots."""
        numbers = {f"{under}.{k}" if under else k: v for k, v in evaluation_metrics(summary).items()}
        self.each("metrics", numbers, step)
        self.each("files", list(files), None, under)

    def log_adapter(self, adapter: Path) -> None:
        self.each("files", [], adapter)

    def log_text(self, name: str, text: str) -> None:
        self.each("text", name, text)

    def close(self) -> None:
        self.each("close")


def read_ids(run: RunDir) -> dict[str, Any]:
    """The tracker ids a run recorded (`tracking.json`); {} when it has none."""
    try:
        found = json.loads(run.tracking.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return found if isinstance(found, dict) else {}


@contextmanager
def session(run: RunDir, names: Sequence[str]) -> Iterator[Session]:
    """Open the named trackers' runs for `run` (none: a session that logs nothing); always closed, even on error."""
    opened = Session(run, names)
    try:
        yield opened
    finally:
        opened.close()


def require(run: RunDir | None, names: Sequence[str], where: str) -> None:
    """Refuse `--report-to` for a run that recorded no tracker runs, or trackers that are not installed."""
    if not names:
        return
    if run is None or not run.tracking.is_file():
        shown = run.path if run else "an adapter outside a run directory"
        raise TrackingError(
            f"{where}: {shown} has no tracking.json (no tracker run to log to); train with train.report_to set"
        )
    check(names, where)


@contextmanager
def reopen(run: RunDir | None, names: Sequence[str], where: str) -> Iterator[Session]:
    """The trackers of a finished run, for `ftkit eval` / `ftkit compare --report-to` (none asked: a session
    that logs and writes nothing)."""
    require(run, names, where)
    with session(run or RunDir(Path(".")), names) as opened:
        yield opened

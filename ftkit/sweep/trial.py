"""One trial: the recipe with the sampled values, trained as an ordinary run under `trials/NNN/`.

The data was prepared once for the whole sweep (without the test split) and every trial trains on it:
a trial costs loading the base model and training; the metric's confidence interval is bootstrapped from the
kept step's predictions on the validation sample, made during training (a pass of their own only when that step
was not evaluated in this process). Each validation evaluation during training is reported to Optuna; when the
pruner says stop, training stops at that step, the adapter kept so far is saved (the run directory stays
usable) and the trial is recorded as pruned.
"""

from __future__ import annotations

import math
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from transformers import TrainerCallback

from ftkit import runs
from ftkit.data.prepared import PreparedData
from ftkit.evaluation.evaluator import predict_system, score_system
from ftkit.recipe import Recipe, load_recipe
from ftkit.sweep import study as studies
from ftkit.sweep.space import Space, overrides
from ftkit.training.selection import metric_key
from ftkit.training.trainer import TrainResult, train

TRIAL_FILE = "trial.json"  # in each trial's run directory: the parameters, the value, the timings


class QuotaReached(Exception):
    """Other workers already finished or are running the trials asked for; this one is not run."""


class ReportToTrial(TrainerCallback):
    """Report each validation evaluation to the Optuna trial, and stop training when the pruner says so."""

    def __init__(self, trial: optuna.Trial, metric: str) -> None:
        self.trial, self.key = trial, metric_key(metric)
        self.pruned_at: int | None = None
        self.last = float("nan")  # the last value reported

    def on_evaluate(
        self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None, **kw: Any
    ) -> None:
        if metrics is None or self.key not in metrics:
            return
        self.last = float(metrics[self.key])
        self.trial.report(self.last, state.global_step)
        if self.trial.should_prune():
            self.pruned_at = state.global_step
            control.should_training_stop = True


def trial_dir(trials: Path, number: int) -> Path:
    return trials / f"{number:03d}"


@dataclass
class Objective:
    """What Optuna calls per trial; returns the kept adapter's validation metric."""

    recipe_path: Path
    recipe_overrides: list[str]
    space: Space
    prepared: PreparedData
    trials: Path  # sweeps/<name>/trials
    metric: str
    quota: int  # --trials, across every worker of the study

    def __call__(self, trial: optuna.Trial) -> float:
        started = time.perf_counter()
        if studies.taken(trial.study, trial.number) >= self.quota:
            trial.study.stop()
            raise QuotaReached(f"trial {trial.number}: {self.quota} trials are finished or running elsewhere")
        params = {d.key: d.suggest(trial) for d in self.space.dimensions}
        run = runs.RunDir(trial_dir(self.trials, trial.number).resolve())
        recipe = load_recipe(self.recipe_path, [*self.recipe_overrides, *overrides(params), f"output.dir={run.path}"])
        with runs.locked(run):
            runs.prepare(run, overwrite=False, resume=False)  # a number is run once: an existing folder is refused
            # recorded once the folder exists, so a trial's run_dir names a folder even if its worker dies next
            trial.set_user_attr("run_dir", str(run.path))
            trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
            runs.write_text(run.recipe, recipe.to_yaml())
            watcher = ReportToTrial(trial, self.metric)
            result = train(recipe, run, self.prepared, callbacks=[watcher])
            # A pruned trial is no candidate: its value is its last report (the pruner's), without a CI.
            interval = None if watcher.pruned_at is not None else self._validation_interval(recipe, result)
            value = watcher.last if interval is None else interval.point
            record = {
                "number": trial.number,
                "params": params,
                "metric": self.metric,
                "value": value,
                "ci": None if interval is None else [_finite(interval.low), _finite(interval.high)],
                "ci_method": None if interval is None else interval.method,
                "kept_step": result.kept.step,
                "steps": result.steps,
                "pruned_at": watcher.pruned_at,
                "train_s": round(result.wall_s, 2),
                "trial_s": round(time.perf_counter() - started, 2),
            }
            runs.write_json(run.path / TRIAL_FILE, record)
        for key in ("value", "ci", "ci_method", "kept_step", "steps", "pruned_at", "train_s", "trial_s"):
            trial.set_user_attr(key, record[key])
        if watcher.pruned_at is not None:
            raise optuna.TrialPruned(f"pruned at step {watcher.pruned_at}")
        return value

    def _validation_interval(self, recipe: Recipe, result: TrainResult) -> Any:
        """The kept adapter's metric on the validation sample it was chosen on, with its bootstrap CI: from the
        predictions training made at the kept step (the sweep's validation split is that sample), else predicted."""
        task = self.prepared.task
        if result.kept_validation is not None:
            examples, predictions = result.kept_validation
        else:
            examples = self.prepared.splits["validation"].examples
            result.model.set_adapter("default")
            predictions, _ = predict_system(
                task, result.model, result.tokenizer, examples, recipe.eval.batch_size, "validation"
            )
        scored = score_system(task, "trial", predictions, 0.0, examples, [self.metric], recipe.eval.bootstrap)
        return scored.metrics[self.metric]


def _finite(value: float) -> float | None:
    """JSON has no NaN: an interval too small to compute is null."""
    return value if math.isfinite(value) else None

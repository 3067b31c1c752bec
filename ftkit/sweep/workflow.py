"""The path of `ftkit sweep`: recipe and space checked -> data prepared once (no test split) -> the Optuna
study -> trials as run directories -> the winner and runner-up on test, once -> report.

A fresh sweep creates `sweeps/<name>/` (or `--dir`) with the SQLite study in it; `--resume` continues that
study after a kill; `--join` adds a worker to a study in a shared `--storage` (several at once). Only a
worker started without `--join` runs the final test, after the trials asked for are finished.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from ftkit.data.prepared import PreparedData, prepare
from ftkit.errors import FtkitError
from ftkit.evaluation.sample import draw
from ftkit.recipe import Recipe, load_recipe
from ftkit.sweep import report
from ftkit.sweep import study as studies
from ftkit.sweep.final import test_best
from ftkit.sweep.space import load_space
from ftkit.sweep.trial import Objective, QuotaReached
from ftkit.tasks import get_task
from ftkit.training import selection


@dataclass(frozen=True)
class Options:
    """`ftkit sweep`'s options (see its --help)."""

    trials: int = 10
    timeout: float | None = None
    storage: str | None = None
    join: bool = False
    resume: bool = False
    folder: Path | None = None
    heartbeat: int = 10
    pruner: studies.Pruner = "median"
    seed: int = 0


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _check_recipe(recipe: Recipe) -> str:
    """A sweep chooses on validation and tests once on test: it needs both. Returns the metric it chooses by."""
    missing = [s for s in ("validation", "test") if not recipe.data.has_split(s)]
    if missing:
        raise FtkitError(
            f"ftkit sweep chooses on the validation split and tests the winner on the test split; the recipe has no "
            f"{' and no '.join(missing)} split: add data.{missing[0]} or a data.split.{missing[0]} share"
        )
    metric = selection.select_metric(recipe, get_task(recipe.task, recipe.data.max_length))
    if recipe.eval.metrics and metric not in recipe.eval.metrics:
        raise FtkitError(f"eval.metrics must include {metric}, the metric the sweep chooses by (eval.select_metric)")
    return metric


def _check_folder(folder: Path, options: Options) -> None:
    if options.join:
        return
    if options.resume and not (folder / "study.db").exists() and options.storage is None:
        raise FtkitError(f"--resume: {folder} holds no study.db to continue; start the sweep without --resume")
    if not options.resume and folder.exists() and any(folder.iterdir()):
        raise FtkitError(
            f"{folder} already exists; continue it with --resume, add a worker with --join, or choose another --dir"
        )


def _validation_sample(prepared: PreparedData, recipe: Recipe) -> None:
    """Every validation evaluation of every trial, its loss as well as its metric, on the same seeded
    eval.during_training_examples rows (the Trainer's validation loss would otherwise run over the whole split
    at every evaluation of every trial)."""
    split, encoded = prepared.splits["validation"], prepared.encoded["validation"]
    drawn = {
        id(e)
        for e in draw(prepared.task, split.examples, recipe.eval.during_training_examples, recipe.eval.seed).examples
    }
    pairs = [(e, r) for e, r in zip(encoded.examples, encoded.rows) if id(e) in drawn]
    split.examples = encoded.examples = [e for e, _ in pairs]
    encoded.rows = [r for _, r in pairs]


def progress(quota: int) -> object:
    """One line per finished trial: its parameters, its validation value, whether it was pruned, its time."""

    def line(study: optuna.Study, trial: FrozenTrial) -> None:
        done = len(studies.finished(study))
        params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items())
        attrs = trial.user_attrs
        if trial.state == TrialState.FAIL and attrs.get("value") is None:
            say(f"trial {trial.number}: not run ({quota} trials are finished or running elsewhere)")
            return
        state = {TrialState.PRUNED: f"pruned at step {attrs.get('pruned_at')}", TrialState.COMPLETE: "complete"}
        say(
            f"trial {trial.number} [{done}/{quota}] {state.get(trial.state, trial.state.name.lower())}: {params} -> "
            f"validation {attrs.get('value')} in {attrs.get('trial_s')} s ({attrs.get('steps')} steps)"
        )

    return line


def sweep(recipe_path: Path, overrides: list[str], space_path: Path, options: Options) -> int:
    started = time.perf_counter()
    recipe = load_recipe(recipe_path, overrides)
    metric = _check_recipe(recipe)
    space = load_space(space_path, recipe_path, overrides)
    name = recipe.name or recipe_path.stem
    folder = (options.folder or Path("sweeps") / name).resolve()
    _check_folder(folder, options)
    # Tokenised once for every trial; the test split is left unread until the search is over.
    prepared = prepare(recipe, held_out=("validation",))
    prepared.raise_if_fatal()
    _validation_sample(prepared, recipe)
    chosen = selection.plan(recipe, prepared.task, True, False)
    folder.mkdir(parents=True, exist_ok=True)
    storage = studies.open_storage(studies.storage_url(options.storage, folder), options.heartbeat)
    study = studies.open_study(
        name,
        storage,
        space,
        maximize=chosen.greater_is_better,
        seed=options.seed,
        kind=options.pruner,
        create=not (options.resume or options.join),
    )
    if options.resume:
        studies.wait_for_stale(study, storage, say)
    setup_s = time.perf_counter() - started
    shape = f"a grid of {space.size} combinations" if space.size else "a space with ranges"
    say(
        f"sweep {name}: {options.trials} trials over {shape} ({type(study.sampler).__name__}, "
        f"{type(study.pruner).__name__}), choosing by validation {metric}; data prepared in {setup_s:.1f} s -> {folder}"
    )
    objective = Objective(recipe_path, overrides, space, prepared, folder / "trials", metric, options.trials)
    if len(studies.finished(study)) < options.trials:
        study.optimize(
            objective,
            timeout=options.timeout,
            catch=(QuotaReached,),
            callbacks=[progress(options.trials), studies.stop_at(options.trials)],  # type: ignore[list-item]
        )
    if options.join:
        say(f"worker done: {len(studies.finished(study))} trials finished; the starting worker tests and reports")
        return 0
    best = report.ranked(study.get_trials(deepcopy=False), chosen.greater_is_better)
    final = None
    if best:
        say(f"testing trial {best[0].number} (winner) and the runner-up on the test split, beside the base model")
        final = test_best(recipe_path, overrides, best, metric, folder / "test")
        say(final.verdict())
    written = report.write(folder, study, metric, chosen.greater_is_better, final, setup_s)
    say("sweep reports: " + ", ".join(str(p) for p in written))
    return 0

"""The Optuna study behind a sweep: its storage, sampler and pruner, and how workers share it.

Storage is Optuna's `RDBStorage`: a SQLite file in the sweep folder by default, or any SQLAlchemy URL
(`postgresql://...`) that several `ftkit sweep --join` workers share. Each running trial beats a heartbeat;
a trial whose worker died (no beat for `grace` seconds) is failed by the next worker that starts a trial and
re-queued once with the same parameters by Optuna's `RetryFailedTrialCallback`, so it is neither lost nor
run twice under one number.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import optuna
from optuna.storages import RDBStorage, RetryFailedTrialCallback
from optuna.trial import FrozenTrial, TrialState

from ftkit.errors import FtkitError
from ftkit.sweep.space import Space

Pruner = Literal["median", "hyperband", "none"]
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
GRACE_BEATS = 3  # a trial is stale after this many missed heartbeats
RETRIES = 2  # how often one trial's parameters are re-queued after its worker died


class StudyError(FtkitError):
    """A storage or study that this sweep cannot use."""


def storage_url(url: str | None, folder: Path) -> str:
    """The SQLAlchemy URL of the study: `--storage`, or `study.db` (SQLite) in the sweep folder."""
    return url or f"sqlite:///{(folder / 'study.db').resolve()}"


def open_storage(url: str, heartbeat: int) -> RDBStorage:
    try:
        return RDBStorage(
            url,
            heartbeat_interval=heartbeat,
            grace_period=GRACE_BEATS * heartbeat,
            failed_trial_callback=RetryFailedTrialCallback(max_retry=RETRIES),
        )
    except Exception as error:  # SQLAlchemy's and the drivers' errors share no base class worth naming
        raise StudyError(f"--storage: cannot open {_redacted(url)}: {str(error).splitlines()[0]}") from None


def _redacted(url: str) -> str:
    """The URL without its password: messages are logged, secrets are not."""
    scheme, sep, rest = url.partition("://")
    if "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    return f"{scheme}{sep}{credentials.split(':')[0]}:***@{host}"


def sampler(space: Space, seed: int) -> optuna.samplers.BaseSampler:
    """The grid when every dimension is a list of choices, else TPE; seeded, so a sweep can be repeated."""
    if space.is_grid:
        return optuna.samplers.GridSampler(space.grid(), seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def pruner(kind: Pruner) -> optuna.pruners.BasePruner:
    """Median: stop a trial whose validation metric is below the median of earlier trials at the same step
    (after 2 trials have finished, and not at a trial's first evaluation). Hyperband: successive halving over
    evaluation steps."""
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner()
    return optuna.pruners.NopPruner()


def open_study(
    name: str, storage: RDBStorage, space: Space, *, maximize: bool, seed: int, kind: Pruner, create: bool
) -> optuna.Study:
    """Create the study (a fresh sweep) or load it (`--resume`, `--join`); the direction must agree."""
    direction: Literal["maximize", "minimize"] = "maximize" if maximize else "minimize"
    try:
        study = optuna.create_study(
            storage=storage,
            sampler=sampler(space, seed),
            pruner=pruner(kind),
            study_name=name,
            direction=direction,
            load_if_exists=not create,
        )
    except optuna.exceptions.DuplicatedStudyError:
        raise StudyError(
            f"a study named '{name}' already exists in the storage; continue it with --resume, or add workers with "
            "--join"
        ) from None
    if study.direction.name.lower() != direction:
        raise StudyError(f"study '{name}' was created to {study.direction.name.lower()}, this recipe would {direction}")
    return study


def finished(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=FINISHED)


def stop_at(quota: int) -> Callable[[optuna.Study, FrozenTrial], None]:
    """An Optuna callback: stop this worker once the study has `quota` finished trials (all workers together)."""

    def stop(study: optuna.Study, trial: FrozenTrial) -> None:
        if len(finished(study)) >= quota:
            study.stop()

    return stop


def taken(study: optuna.Study, number: int) -> int:
    """Trials that count towards `--trials` besides trial `number`: finished ones and ones running elsewhere."""
    states = (*FINISHED, TrialState.RUNNING)
    return sum(1 for t in study.get_trials(deepcopy=False, states=states) if t.number != number)


def wait_for_stale(study: optuna.Study, storage: RDBStorage, say: Any) -> None:
    """On --resume: trials a killed worker left RUNNING are failed (and re-queued) once their heartbeat is
    older than the grace period; wait that long at most, so they are not counted as still running."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if not running:
        return
    grace = GRACE_BEATS * (storage.get_heartbeat_interval() or 0)
    say(
        f"trial(s) {[t.number for t in running]} were running when the sweep stopped; waiting up to {grace} s "
        "for their heartbeat to go stale, then they are failed and re-queued"
    )
    deadline = time.monotonic() + grace + 1
    while time.monotonic() < deadline:
        optuna.storages.fail_stale_trials(study)
        if not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            return
        time.sleep(1)

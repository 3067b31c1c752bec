"""A whole sweep on the tiny model: trials as run directories, pruning, the test split read only at the end,
the report; and --resume after SIGKILL continues with the trials already done."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from ftkit import paths
from ftkit.cli import main

REPO = Path(__file__).resolve().parents[2]


def _trials_done(folder: Path) -> int:
    return len(list((folder / "trials").glob("*/trial.json")))


def test_the_test_split_is_opened_only_after_every_trial(
    sweep_recipe: Path, space: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An audit hook on `open` (Python's own, seeing every file any library opens) records each opening of the test
    file with the number of trials finished by then; the search finishes all 4 before the first one. The one
    opening that is not a read is the recipe's check that the file is readable (`paths._readable`, one byte),
    which every command does when it validates the recipe; it is counted apart."""
    test_file = Path(yaml.safe_load(sweep_recipe.read_text())["data"]["test"]).resolve()
    folder = tmp_path / "sweep"
    opened: list[int] = []
    probes: list[int] = []

    def watch(event: str, args: tuple[Any, ...]) -> None:
        if event == "open" and isinstance(args[0], str | Path) and Path(args[0]).resolve() == test_file:
            frame = sys._getframe(1)
            while frame is not None and frame.f_code is not paths._readable.__code__:
                frame = frame.f_back  # type: ignore[assignment]
            (probes if frame is not None else opened).append(_trials_done(folder))

    sys.addaudithook(watch)
    assert main(["sweep", str(sweep_recipe), "--space", str(space), "--trials", "4", "--dir", str(folder)]) == 0
    assert opened and min(opened) == 4  # never read before the search was over
    assert probes  # the watch sees the recipe's checks too: it would see a read
    summary = json.loads((folder / "sweep.json").read_text())
    board = summary["leaderboard"]
    assert sorted(r["trial"] for r in board) == [0, 1, 2, 3]
    assert all(r["state"] in ("complete", "pruned") for r in board)
    assert board[0]["state"] == "complete" and board[0]["ci"] is not None
    for r in board:  # each trial is an ordinary run directory
        run = Path(r["run_dir"])
        assert run.parent == folder / "trials" and (run / "adapter" / "adapter_config.json").is_file()
        assert (run / "recipe.yaml").is_file() and (run / "kept.json").is_file()
        if r["state"] == "complete":  # its value is the kept adapter's validation metric, as training measured it
            assert r["value"] == pytest.approx(json.loads((run / "kept.json").read_text())["value"], abs=1e-9)
    test = summary["test"]
    assert test["winner"].startswith(f"trial {board[0]['trial']} ")
    systems = list(test["metrics"]["systems"])
    assert systems[0] == "base" and len(systems) == 3
    assert test["head_to_head"]["test"] == "McNemar exact"
    assert ("beats" in test["verdict"]) == test["head_to_head"]["significant"]
    for name in ("report.md", "optimization_history.png", "param_importances.png", "test/metrics.json"):
        assert (folder / name).is_file(), name
    assert "validation accuracy (95% CI)" in (folder / "report.md").read_text()
    assert capsys.readouterr().err.count("trial ") >= 4  # a progress line per trial


def test_the_median_pruner_stops_a_trial_behind_the_others(
    write_recipe: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Learning rates 1e-6 (does nothing) vs 5e-2 on the grid; after two finished trials, the one behind the
    median at its second evaluation is stopped there, its adapter still saved."""
    recipe = write_recipe(
        "prune",
        train={"max_steps": 6, "batch_size": 4, "eval_every": 2, "save_every": 2, "log_every": 2},
        eval={"batch_size": 8, "bootstrap": 200},
    )
    grid = tmp_path / "grid.yaml"
    grid.write_text("train.learning_rate: [5.0e-2, 4.0e-2, 1.0e-6, 2.0e-6]\n", encoding="utf-8")
    folder = tmp_path / "s"
    assert main(["sweep", str(recipe), "--space", str(grid), "--trials", "4", "--dir", str(folder)]) == 0
    study = optuna.load_study(study_name="prune", storage=f"sqlite:///{folder / 'study.db'}")
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert pruned, [(t.params, t.intermediate_values) for t in study.trials]
    for trial in pruned:
        assert trial.user_attrs["steps"] < 6 and Path(trial.user_attrs["run_dir"], "adapter").is_dir()
        kept = json.loads(Path(trial.user_attrs["run_dir"], "kept.json").read_text(encoding="utf-8"))
        assert not kept["early_stopped"] and "pruner" in kept["reason"], kept["reason"]  # not "early stopping"


def _ftkit(*args: str) -> subprocess.Popen[bytes]:
    env = os.environ | {"PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "ftkit.cli", *args], env=env, stderr=subprocess.PIPE)


def test_resume_after_sigkill_continues_with_the_trials_done(sweep_recipe: Path, space: Path, tmp_path: Path) -> None:
    folder = tmp_path / "sweep"
    args = [
        "sweep",
        str(sweep_recipe),
        "--space",
        str(space),
        "--trials",
        "3",
        "--dir",
        str(folder),
        "--heartbeat",
        "1",
    ]
    worker = _ftkit(*args)
    deadline = time.monotonic() + 240
    while _trials_done(folder) < 1 or not (folder / "trials" / "001").is_dir():
        assert worker.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    first = (folder / "trials" / "000" / "trial.json").read_text()
    assert main([*args, "--resume"]) == 0
    study = optuna.load_study(study_name="sweep", storage=f"sqlite:///{folder / 'study.db'}")
    states = {t.number: t.state for t in study.trials}
    assert states[1] == optuna.trial.TrialState.FAIL  # killed mid-trial, failed after its heartbeat stopped
    retry = [t for t in study.trials if optuna.storages.RetryFailedTrialCallback.retried_trial_number(t) == 1]
    assert len(retry) == 1 and retry[0].params == study.trials[1].params  # re-run once, same parameters
    finished = [
        t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    ]
    assert len(finished) == 3
    assert (folder / "trials" / "000" / "trial.json").read_text() == first  # trial 0 was not run again
    assert json.loads((folder / "sweep.json").read_text())["test"] is not None

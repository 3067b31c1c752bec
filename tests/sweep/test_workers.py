"""Two workers on one study in a real PostgreSQL server (Debian's, started here on a loopback port with its data
in a temp folder): every trial number runs once, the study gets exactly the trials asked for, and a worker killed
with SIGKILL mid-trial leaves a trial that is failed (its heartbeat stopped) and re-run once by the other."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest

REPO = Path(__file__).resolve().parents[2]
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def _server_bin() -> Path:
    """Debian's server binaries (`apt-get install postgresql`; `make test` installs it when absent)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    assert found, "PostgreSQL is not installed: apt-get install -y postgresql (`make test` does)"
    return Path(found[-1]).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def postgres() -> Iterator[str]:
    """A throwaway server; initdb refuses to run as root, so as root it runs as the `postgres` user."""
    binaries, port = _server_bin(), _free_port()
    data = Path(tempfile.mkdtemp(prefix="ftkit-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(data, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    pgdata = data / "db"
    quiet = {"stdout": subprocess.DEVNULL, "check": True}
    subprocess.run([*as_user, binaries / "initdb", "-D", pgdata, "-U", "ftkit", "--auth=trust"], **quiet)  # type: ignore[call-overload]
    options = f"-p {port} -h 127.0.0.1 -k {data}"
    subprocess.run(
        [*as_user, binaries / "pg_ctl", "-D", pgdata, "-o", options, "-l", data / "log", "-w", "start"], **quiet
    )  # type: ignore[call-overload]
    try:
        subprocess.run(
            [
                *as_user,
                binaries / "createdb",
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-U",
                "ftkit",
                "sweeps",
            ],
            **quiet,
        )  # type: ignore[call-overload]
        yield f"postgresql+psycopg2://ftkit@127.0.0.1:{port}/sweeps"
    finally:
        subprocess.run(
            [*as_user, binaries / "pg_ctl", "-D", pgdata, "-m", "immediate", "stop"], stdout=subprocess.DEVNULL
        )
        shutil.rmtree(data, ignore_errors=True)


def _worker(recipe: Path, space: Path, storage: str, folder: Path) -> subprocess.Popen[bytes]:
    args = ["sweep", str(recipe), "--space", str(space), "--trials", "4", "--storage", storage, "--join"]
    args += ["--dir", str(folder), "--heartbeat", "1"]
    env = os.environ | {"PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "ftkit.cli", *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def test_two_workers_share_a_study_and_a_killed_trial_is_rerun_once(
    postgres: str, sweep_recipe: Path, space: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "sweep"
    victim = _worker(sweep_recipe, space, postgres, folder)
    survivor = _worker(sweep_recipe, space, postgres, folder)
    killed: int | None = None
    deadline = time.monotonic() + 300
    while killed is None:
        assert victim.poll() is None and time.monotonic() < deadline, "the first worker never started a trial"
        time.sleep(0.5)
        try:
            study = optuna.load_study(study_name="sweep", storage=postgres)
        except KeyError:
            continue  # not created yet
        for trial in study.get_trials(states=(optuna.trial.TrialState.RUNNING,)):
            if trial.user_attrs.get("worker", "").endswith(f":{victim.pid}"):
                victim.send_signal(signal.SIGKILL)
                killed = trial.number
    victim.wait()
    assert survivor.wait(timeout=600) == 0
    trials = optuna.load_study(study_name="sweep", storage=postgres).trials
    assert len([t for t in trials if t.state in FINISHED]) == 4  # exactly the trials asked for
    assert trials[killed].state == optuna.trial.TrialState.FAIL  # failed once its heartbeat stopped
    retries = [t for t in trials if optuna.storages.RetryFailedTrialCallback.retried_trial_number(t) == killed]
    assert len(retries) == 1 and retries[0].state in FINISHED and retries[0].params == trials[killed].params
    started = [t for t in trials if "run_dir" in t.user_attrs]
    assert len({t.user_attrs["run_dir"] for t in started}) == len(started)  # one run directory per trial number
    assert sorted(p.name for p in (folder / "trials").iterdir() if not p.name.startswith(".")) == [
        f"{t.number:03d}" for t in started
    ]
    assert {t.user_attrs["worker"] for t in started} >= {f"{socket.gethostname()}:{victim.pid}"}

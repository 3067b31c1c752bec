"""Never lose work: SIGKILL and resume, the run lock, a NaN loss, atomic writes under a full disk."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from ftkit import runs
from ftkit.cli import main
from ftkit.recipe import load_recipe
from ftkit.runs import RunDir

TRAIN = {"max_steps": 30, "save_every": 3, "batch_size": 2, "learning_rate": 5e-3, "log_every": 1}


def _ftkit(*args: str) -> subprocess.Popen[bytes]:
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "ftkit.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )


def _stderr_tail(process: subprocess.Popen[bytes]) -> str:
    """The end of a finished `_ftkit` process's stderr, for an assertion message."""
    assert process.stderr is not None  # _ftkit pipes it
    return process.stderr.read().decode()[-2000:]


def test_sigkill_mid_run_then_resume_matches_an_uninterrupted_run(write_recipe) -> None:
    reference = write_recipe("uninterrupted", train=TRAIN)
    killed = write_recipe("killed", train=TRAIN)
    done = _ftkit("train", str(reference), "--no-eval")
    assert done.wait(timeout=300) == 0, _stderr_tail(done)

    run = RunDir(load_recipe(killed).run_dir)
    process = _ftkit("train", str(killed), "--no-eval")
    deadline = time.monotonic() + 300
    while (last := run.last_checkpoint()) is None or int(last.name.split("-")[1]) < 6:
        assert process.poll() is None, "finished before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert not run.adapter.exists(), "killed before the end: no final adapter yet"
    last = run.last_checkpoint()
    assert last is not None
    step = int(last.name.split("-")[1])
    assert 6 <= step < 30

    resumed = _ftkit("train", str(killed), "--resume", "--no-eval")
    assert resumed.wait(timeout=300) == 0, _stderr_tail(resumed)
    a = load_file(RunDir(load_recipe(reference).run_dir).adapter / "adapter_model.safetensors")
    b = load_file(run.adapter / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6)


def test_a_second_process_on_the_same_run_directory_is_refused(write_recipe, capsys) -> None:
    path = write_recipe("locked")
    run = RunDir(load_recipe(path).run_dir)
    run.path.mkdir(parents=True)
    with runs.locked(run):
        assert main(["train", str(path), "--overwrite"]) == 2
    assert "in use by another ftkit process" in capsys.readouterr().err
    assert run.path.is_dir()


def test_nan_loss_stops_with_the_step(write_recipe, tiny_model_dir, tmp_path, capsys) -> None:
    """A model whose final norm is NaN: the first logged loss is NaN and training stops there."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    poisoned = tmp_path / "poisoned"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        model.model.norm.weight.fill_(float("nan"))
    model.save_pretrained(poisoned)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(poisoned)
    path = write_recipe("nan", model={"source": str(poisoned)})
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert "loss became nan at step 1" in err and "learning_rate" in err
    assert not RunDir(load_recipe(path).run_dir).adapter.exists()


def test_nan_guard_names_the_step_of_a_late_divergence() -> None:
    from types import SimpleNamespace

    from ftkit.training.trainer import NanGuard, TrainingError

    guard = NanGuard()
    guard.on_log(None, SimpleNamespace(global_step=10), None, logs={"loss": 0.5})
    with pytest.raises(TrainingError, match="loss became inf at step 11; the last good checkpoint is kept"):
        guard.on_log(None, SimpleNamespace(global_step=11), None, logs={"loss": float("inf")})


def test_full_disk_during_a_write_leaves_the_previous_file_intact(tmp_path, monkeypatch) -> None:
    target = tmp_path / "metrics.json"
    runs.write_json(target, {"accuracy": 0.9})
    real_fsync = os.fsync

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError):
        runs.write_json(target, {"accuracy": 0.1})
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert target.read_text().strip().endswith("}") and '"accuracy": 0.9' in target.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"], "no temporary file left behind"


def test_staged_dir_replaces_only_on_success(tmp_path) -> None:
    target = tmp_path / "adapter"
    with runs.staged_dir(target) as stage:
        (stage / "weights").write_text("v1")
    with pytest.raises(RuntimeError), runs.staged_dir(target) as stage:
        (stage / "weights").write_text("half")
        raise RuntimeError("crash mid-save")
    assert (target / "weights").read_text() == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_a_corrupted_adapter_file_is_detected(write_recipe, capsys) -> None:
    path = write_recipe("corrupt", train={"max_steps": 2})
    assert main(["train", str(path), "--no-eval"]) == 0
    adapter = RunDir(load_recipe(path).run_dir).adapter
    manifest = (adapter / "manifest.json").read_text()
    assert "adapter_model.safetensors" in manifest and "adapter_config.json" in manifest
    weights = adapter / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert main(["eval", str(path), "--adapter", str(adapter)]) == 2
    assert "does not match its sha256" in capsys.readouterr().err


def test_disk_full_during_a_checkpoint_keeps_the_previous_one(write_recipe, monkeypatch, capsys) -> None:
    path = write_recipe("diskfull", train={"max_steps": 6, "save_every": 2})
    run = RunDir(load_recipe(path).run_dir)
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if "checkpoint-4" in str(f):
            raise OSError(errno.ENOSPC, "No space left on device", str(f))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert "the disk is full" in err and "--resume" in err and "Traceback" not in err
    last = run.last_checkpoint()
    assert last is not None and last.name == "checkpoint-2"
    monkeypatch.setattr(torch, "save", real_save)
    assert main(["train", str(path), "--resume", "--no-eval"]) == 0
    assert (run.adapter / "adapter_model.safetensors").is_file()


def test_secrets_in_the_environment_never_reach_outputs(write_recipe, monkeypatch, capsys) -> None:
    secret = "hf_SECRETtoken1234567890"
    monkeypatch.setenv("HF_TOKEN", secret)
    monkeypatch.setenv("WANDB_API_KEY", secret)
    path = write_recipe("secret", train={"max_steps": 2})
    assert main(["train", str(path)]) == 0
    out = capsys.readouterr()
    assert secret not in out.out + out.err
    run = RunDir(load_recipe(path).run_dir)
    for file in run.path.rglob("*"):
        if file.is_file():
            assert secret.encode() not in file.read_bytes(), file


def test_trust_remote_code_is_off_by_default_and_warned_about(write_recipe, caplog) -> None:
    from ftkit.models import load_model

    recipe = load_recipe(write_recipe("trc"))
    assert recipe.model.trust_remote_code is False
    with caplog.at_level("WARNING"):
        load_model(recipe.model.model_copy(update={"trust_remote_code": True}))
    assert "trust_remote_code is on" in caplog.text

"""A full disk, for real: a small tmpfs is mounted and filled so that a save runs out of space midway.

No write is simulated: the sizes of a checkpoint and an adapter are measured on a first run, the disk is
filled to leave room for some of them and not the next, and the real libraries fail as they do (torch.save's
`RuntimeError: [enforce fail at inline_container.cc] unexpected pos`, safetensors' and tokenizers' errors).
Each case must end in one "the disk is full" line naming the path, with what was complete before intact,
and complete once the filler is removed. Needs root (mount); skipped elsewhere.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ftkit.cli import main
from ftkit.runs import RunDir, size_of, verify_manifest

MB = 1024 * 1024


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 MB tmpfs of its own, unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; the full-disk tests run as root in CI")
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path, leave: int) -> Path:
    """Fill the disk with one file so that `leave` bytes stay free."""
    filler = disk / "filler"
    with open(filler, "wb") as handle:
        remaining = shutil.disk_usage(disk).free - leave
        while remaining > 0:
            remaining -= handle.write(b"\0" * min(remaining, 4 * MB))
    return filler


def disk_full_line(err: str, path: Path) -> str:
    # The error may follow the progress bar's last, unterminated line.
    [line] = ["ftkit: error:" + end for end in err.split("ftkit: error:")[1:]]
    line = line.splitlines()[0]
    assert line.startswith("ftkit: error: the disk is full: writing ") and str(path) in line, err
    assert "MB free" in line and "Traceback" not in err, err
    return line


def _measured(write_recipe, disk: Path, name: str, steps: int) -> tuple[Path, RunDir, int, int]:
    """Train once with room to spare: the recipe, its run, the size of one checkpoint and of the adapter."""
    path = write_recipe(name, train={"max_steps": steps, "save_every": 2}, output={"dir": str(disk / name)})
    run = RunDir(disk / name)
    assert main(["train", str(path), "--no-eval"]) == 0
    last = run.last_checkpoint()
    assert last is not None
    checkpoint, adapter = size_of(last), size_of(run.adapter)
    shutil.rmtree(run.path)
    return path, run, checkpoint, adapter


def test_disk_full_during_a_checkpoint_then_resume(write_recipe, disk: Path, capsys) -> None:
    path, run, checkpoint, _ = _measured(write_recipe, disk, "ckpt", 6)
    filler = fill(disk, leave=checkpoint * 3 // 2)  # room for checkpoint-2, not checkpoint-4
    capsys.readouterr()
    assert main(["train", str(path), "--no-eval"]) == 2
    line = disk_full_line(capsys.readouterr().err, run.checkpoints)
    assert "checkpoint-2" in line and "--resume" in line
    assert run.last_checkpoint() == run.checkpoints / "checkpoint-2"
    assert sorted(p.name for p in run.checkpoints.iterdir()) == ["checkpoint-2"], "the half-written one is gone"
    assert not run.adapter.exists()
    filler.unlink()
    assert main(["train", str(path), "--resume", "--no-eval"]) == 0
    verify_manifest(run.adapter)
    assert json.loads((run.checkpoints / "checkpoint-6" / "trainer_state.json").read_text())["global_step"] == 6


def test_disk_full_during_the_adapter_save_then_resume(write_recipe, disk: Path, capsys) -> None:
    path, run, checkpoint, adapter = _measured(write_recipe, disk, "adapter", 4)
    filler = fill(disk, leave=2 * checkpoint + adapter // 2)  # checkpoints 2 and 4 fit, the adapter does not
    capsys.readouterr()
    assert main(["train", str(path), "--no-eval"]) == 2
    line = disk_full_line(capsys.readouterr().err, run.adapter)
    assert "checkpoint-4" in line
    assert run.last_checkpoint() == run.checkpoints / "checkpoint-4" and not run.adapter.exists()
    assert not [p for p in run.path.iterdir() if p.name.startswith(".")], "no staged folder left"
    filler.unlink()
    assert main(["train", str(path), "--resume", "--no-eval"]) == 0
    verify_manifest(run.adapter)


def test_disk_full_during_an_evaluation_report_keeps_the_previous_one(trained_run, disk: Path, capsys) -> None:
    run = trained_run("evalfull")
    recipe, out = run.parent.parent / "evalfull.yaml", disk / "eval"
    assert main(["eval", str(recipe), "--adapter", str(run / "adapter"), "--out", str(out)]) == 0
    before = (out / "metrics.json").read_text()
    filler = fill(disk, leave=16 * 1024)
    capsys.readouterr()
    assert main(["eval", str(recipe), "--adapter", str(run / "adapter"), "--out", str(out)]) == 2
    disk_full_line(capsys.readouterr().err, out)
    assert (out / "metrics.json").read_text() == before
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")], "no temporary file left"
    filler.unlink()
    assert main(["eval", str(recipe), "--adapter", str(run / "adapter"), "--out", str(out)]) == 0


def test_disk_full_during_an_export_keeps_the_previous_one(trained_run, disk: Path, capsys) -> None:
    run = trained_run("exportfull")
    out = disk / "package"
    assert main(["export", str(run), "--format", "adapter", "--out", str(out)]) == 0
    filler = fill(disk, leave=256 * 1024)
    capsys.readouterr()
    assert main(["export", str(run), "--format", "adapter", "--out", str(out), "--overwrite"]) == 2
    disk_full_line(capsys.readouterr().err, disk)
    verify_manifest(out)
    assert not [p for p in disk.iterdir() if p.name.startswith(".package")], "no staged folder left"
    filler.unlink()
    assert main(["export", str(run), "--format", "adapter", "--out", str(out), "--overwrite"]) == 0
    verify_manifest(out)

"""Paths that are not readable files each get their own message, from `ftkit validate` and the recipe loader.

Real file kinds only: a directory, /dev/null, a FIFO made with mkfifo, a symlink loop, a broken symlink,
and a file this user cannot read (checked in a child process that drops root, since root reads anything).
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from ftkit import paths
from ftkit.cli import main


def _directory(folder: Path) -> Path:
    (folder / "train_dir").mkdir()
    return folder / "train_dir"


def _fifo(folder: Path) -> Path:
    os.mkfifo(folder / "pipe")
    return folder / "pipe"


def _loop(folder: Path) -> Path:
    (folder / "a").symlink_to(folder / "b")
    (folder / "b").symlink_to(folder / "a")
    return folder / "a"


def _broken(folder: Path) -> Path:
    (folder / "link").symlink_to(folder / "gone.jsonl")
    return folder / "link"


KINDS: dict[str, tuple[Callable[[Path], Path], str]] = {
    "directory": (_directory, "is a directory, not a file"),
    "device": (lambda _: Path("/dev/null"), "is a character device, not a file"),
    "fifo": (_fifo, "is a named pipe (FIFO), not a file"),
    "symlink loop": (_loop, "is a symlink loop"),
    "broken symlink": (_broken, "is a broken symlink (it points to"),
    "missing": (lambda folder: folder / "nope.jsonl", "file not found:"),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_kind_of_non_file_has_its_own_one_line_error(kind: str, tmp_path: Path, capsys) -> None:
    make, expected = KINDS[kind]
    target = make(tmp_path)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"task: {{name: sentiment}}\ndata: {{train: '{target}'}}\n")
    assert main(["validate", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"ftkit: error: {recipe}:2: data.train: ") and expected in err, err
    assert "Traceback" not in err


def test_a_symlink_loop_as_the_recipe_itself(tmp_path: Path, capsys) -> None:
    recipe = _loop(tmp_path)
    assert main(["validate", str(recipe)]) == 2
    assert "is a symlink loop" in capsys.readouterr().err


def test_a_readable_symlink_resolves_to_its_target(tmp_path: Path) -> None:
    (tmp_path / "real.jsonl").write_text("{}\n")
    (tmp_path / "link.jsonl").symlink_to(tmp_path / "real.jsonl")
    assert paths.problem(tmp_path / "link.jsonl") is None


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another user; as that user, chmod 000 does it")
def test_an_unreadable_file_says_permission_denied() -> None:
    folder = Path(tempfile.mkdtemp(dir="/tmp"))  # /tmp is traversable by every user; pytest's tmp_path is not
    folder.chmod(0o755)
    secret = folder / "secret.jsonl"
    secret.write_text("{}\n")
    secret.chmod(0)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: become nobody, ask, report through the pipe
        os.close(read)
        os.setgid(65534)
        os.setuid(65534)
        os.write(write, str(paths.problem(secret)).encode())
        os._exit(0)
    os.close(write)
    answer = os.read(read, 4096).decode()
    os.waitpid(pid, 0)
    os.close(read)
    secret.chmod(stat.S_IRUSR | stat.S_IWUSR)
    assert answer == f"{secret} is not readable by this user (permission denied); fix its permissions or copy it"

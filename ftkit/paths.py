"""What a path on disk is, in words: the one place that turns "not a readable file" into a reason.

"file not found" for a path that exists misleads: a user who pointed a recipe at a folder, a
device, a named pipe or a symlink that loops needs to hear which of those it is. Everything here
uses `os.stat` and `open` only (no `Path.resolve`, which raises `RuntimeError` on a symlink loop),
and never opens a FIFO, which would block until a writer appears.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path


def absolute(base: Path, path: str) -> Path:
    """`path` made absolute against `base` (`~` expanded), without following symlinks (a loop cannot raise)."""
    return Path(os.path.abspath(base / Path(path).expanduser()))


def problem(path: Path, *, allow_directory: bool = False) -> str | None:
    """Why `path` is not a readable regular file (or folder, when allowed), in one phrase; None when it is."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if os.path.islink(path):
            return f"{path} is a broken symlink (it points to {os.readlink(path)}, which does not exist)"
        return f"no such file or folder: {path}" if allow_directory else f"file not found: {path}"
    except OSError as error:
        if error.errno == errno.ELOOP:
            return f"{path} is a symlink loop (its links lead back to themselves); point to the real file"
        if error.errno == errno.ENOTDIR:
            return f"file not found: {path} (a parent of it is a file, not a folder)"
        return f"{path} cannot be inspected: {error.strerror}"
    if stat.S_ISDIR(mode):
        return None if allow_directory and _readable(path) else _directory(path, allow_directory)
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        kind = "character" if stat.S_ISCHR(mode) else "block"
        return f"{path} is a {kind} device, not a file; point to a regular file"
    if stat.S_ISFIFO(mode):
        return f"{path} is a named pipe (FIFO), not a file; ftkit reads its inputs more than once, save it to a file"
    if stat.S_ISSOCK(mode):
        return f"{path} is a socket, not a file; point to a regular file"
    if not stat.S_ISREG(mode):
        return f"{path} is not a regular file; point to a regular file"
    if not _readable(path):
        return f"{path} is not readable by this user (permission denied); fix its permissions or copy it"
    return None


def _directory(path: Path, allowed: bool) -> str:
    if allowed:
        return f"{path} is a folder this user cannot read (permission denied); fix its permissions"
    return f"{path} is a directory, not a file; name a file inside it"


def _readable(path: Path) -> bool:
    """Whether this process can actually read `path` (root passes `os.access` even where reading fails)."""
    try:
        if path.is_dir():
            os.listdir(path)
        else:
            with open(path, "rb") as handle:
                handle.read(1)
    except PermissionError:
        return False
    except OSError:
        return True  # readable in principle; a later read reports its own problem
    return True

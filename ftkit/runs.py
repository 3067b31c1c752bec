"""The run directory: the unit of everything after training, and how files get into it safely.

```
runs/<name>/
  recipe.yaml        fully resolved recipe (absolute paths, all defaults)
  train_log.jsonl    one JSON object per logged step
  kept.json          which step's adapter was kept and why (train.keep), the validation metric per evaluation
  tracking.json      the tracker runs it logs to (train.report_to): MLflow run id, W&B id, TensorBoard folder
  launch.json        processes, backend, batch per process, accumulation, effective batch
  checkpoints/       Trainer checkpoints (adapter + optimizer state), for --resume
  adapter/           the final LoRA adapter (peft format, safetensors) + tokenizer
  metrics.json       held-out metrics, base vs adapter
  predictions.jsonl  per-example predictions
  report.md          human-readable summary
  *.png              loss curves, metric bars, confusion matrices
  eval/              `ftkit eval`'s reports (the same files as above), unless --out says otherwise
```
Every file name of that layout is spelt here, in `RunDir`, and nowhere else; an evaluation's
reports use the same names in whatever folder they are written to.
Files are written to a temporary sibling and renamed into place, so a crash never leaves a
half-written file or folder that looks complete.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO, overload

from ftkit.errors import FtkitError


class RunError(FtkitError):
    """A run directory that cannot be created, resumed or locked."""


class DiskFullError(RunError):
    """A write that ran out of disk space; what was complete before it is intact."""


FULL_BELOW = 1 << 20  # a filesystem with less than 1 MiB free after a failed write is taken to be full
MB = 1024 * 1024


def free_bytes(path: Path) -> int:
    """Free space on the filesystem that holds `path` (or its nearest existing parent)."""
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


_FULL_WORDS = ("No space left on device", "os error 28", "Disk quota exceeded")


def _enospc(error: BaseException | None) -> bool:
    """ENOSPC anywhere in the chain: libraries wrap it (peft, transformers re-raise it as their own; the Rust
    tokenizers and safetensors raise a bare `Exception("No space left on device (os error 28)")`)."""
    seen = 0
    while error is not None and seen < 20:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(words in str(error) for words in _FULL_WORDS):
            return True
        error, seen = error.__cause__ or error.__context__, seen + 1
    return False


def size_of(path: Path) -> int:
    """Bytes under `path` (a file or a folder); 0 when it does not exist."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


@contextmanager
def disk_guard(path: Path, needed: int | Callable[[], int], then: str | Callable[[], str]) -> Iterator[None]:
    """Turn a failed write under `path` into one `DiskFullError` when the disk is full.

    Recognised by the exception (ENOSPC in its chain) and by the disk itself (under `FULL_BELOW` free
    after the failure), because libraries do not always say ENOSPC: `torch.save` raises
    `RuntimeError: [enforce fail at inline_container.cc] unexpected pos`. Any other failure passes
    unchanged. `needed` is a best estimate of the bytes the write takes; `then` says how to continue
    (either may be a function, asked after the failure, when what survived is known).
    """
    try:
        yield
    except FtkitError:
        raise
    except Exception as error:
        free = free_bytes(path)
        if not (_enospc(error) or free < FULL_BELOW):
            raise
        need = needed() if callable(needed) else needed
        raise DiskFullError(
            f"the disk is full: writing {path} needs about {max(need, MB) / MB:.1f} MB free, "
            f"{free / MB:.1f} MB are free there ({type(error).__name__}); {then() if callable(then) else then}"
        ) from error


class _Entry:
    """A file or folder of a run directory, by its name: `RunDir(p).recipe` is `p / "recipe.yaml"`."""

    def __init__(self, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, run: None, owner: type[RunDir]) -> _Entry: ...
    @overload
    def __get__(self, run: RunDir, owner: type[RunDir]) -> Path: ...
    def __get__(self, run: RunDir | None, owner: type[RunDir]) -> _Entry | Path:
        return self if run is None else run.path / self.name


@dataclass(frozen=True)
class RunDir:
    path: Path

    recipe = _Entry("recipe.yaml")
    train_log = _Entry("train_log.jsonl")
    launch = _Entry("launch.json")
    kept = _Entry("kept.json")
    tracking = _Entry("tracking.json")
    checkpoints = _Entry("checkpoints")
    adapter = _Entry("adapter")
    metrics = _Entry("metrics.json")
    predictions = _Entry("predictions.jsonl")
    report = _Entry("report.md")
    metrics_plot = _Entry("metrics.png")
    loss_plot = _Entry("loss_curves.png")

    def confusion_plot(self, system: str) -> Path:
        return self.path / f"confusion_{system}.png"

    @property
    def eval(self) -> RunDir:
        """Where `ftkit eval` writes its reports by default."""
        return RunDir(self.path / "eval")

    def last_checkpoint(self) -> Path | None:
        """The newest complete Trainer checkpoint (Trainer writes `trainer_state.json` last)."""
        done = [p for p in self.checkpoints.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
        return max(done, key=lambda p: int(p.name.split("-")[-1]), default=None)

    def drop_incomplete_checkpoints(self) -> None:
        """Remove checkpoint folders a failed save left half-written (no `trainer_state.json`): they free the
        space the next save needs, and a resume must not find them."""
        for partial in self.checkpoints.glob("checkpoint-*"):
            if not (partial / "trainer_state.json").is_file():
                shutil.rmtree(partial, ignore_errors=True)


ADAPTER_CONFIG = "adapter_config.json"  # peft's file: its presence makes a folder an adapter folder


def is_adapter_folder(folder: Path) -> bool:
    return (folder / ADAPTER_CONFIG).is_file()


def run_of(adapter_dir: Path) -> RunDir | None:
    """The run directory an adapter folder sits in (runs/<name>/adapter beside its recipe.yaml), if any."""
    run = RunDir(adapter_dir.parent)
    return run if adapter_dir.name == "adapter" and run.recipe.is_file() else None


def adapter_folder(target: Path) -> Path:
    """A run directory's adapter, or an adapter folder itself."""
    for candidate in (RunDir(target).adapter, target):
        if is_adapter_folder(candidate):
            return candidate
    raise RunError(f"{target}: not a run directory (no adapter/) nor an adapter folder (no {ADAPTER_CONFIG})")


def adapter_name(folder: Path) -> str:
    """A readable name for an adapter folder: its run's name when it is runs/<name>/adapter, else its own."""
    folder = folder.resolve()
    return folder.parent.name if folder.name == "adapter" else folder.name


def check_target(run: RunDir, *, overwrite: bool, resume: bool) -> None:
    """Refuse, without touching anything, a run directory that the command may not use."""
    path = run.path
    if path.exists() and not path.is_dir():
        raise RunError(f"output.dir {path} is a file; choose a folder for the run")
    if resume and run.last_checkpoint() is None:
        raise RunError(f"{path}: no complete checkpoint to resume from; start without --resume")
    if not resume and not overwrite and path.exists() and any(path.iterdir()):
        raise RunError(f"{path} already exists; pass --overwrite to replace it or --resume to continue it")


def prepare(run: RunDir, *, overwrite: bool, resume: bool) -> None:
    """Create the run directory, replacing an earlier run only when asked (`--overwrite`)."""
    check_target(run, overwrite=overwrite, resume=resume)
    if not resume and run.path.exists():
        shutil.rmtree(run.path)
    run.path.mkdir(parents=True, exist_ok=True)


@contextmanager
def locked(run: RunDir) -> Iterator[None]:
    """Hold an exclusive lock on the run directory, so two processes never write into one run.

    The lock file sits beside the run directory, not in it, so that `--overwrite` (which deletes the
    directory) cannot delete another process's lock along with it.
    """
    run.path.parent.mkdir(parents=True, exist_ok=True)
    with open(run.path.parent / f".{run.path.name}.lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunError(
                f"{run.path} is in use by another ftkit process; wait for it or choose another output.dir"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_bytes(path: Path, data: bytes) -> None:
    """Write a file atomically: a temporary sibling, fsync, then rename over the target."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the final file gets the usual permissions
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, value: Any) -> None:
    write_text(path, json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


@contextmanager
def output_folder(out: Path, overwrite: bool) -> Iterator[Path]:
    """A staged folder that becomes `out` on success; an existing export is replaced only when asked."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise RunError(f"{out} already exists; pass --overwrite to replace it, or choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    with staged_dir(out) as stage:
        yield stage


@contextmanager
def staged_dir(target: Path) -> Iterator[Path]:
    """Yield a temporary folder beside `target`; on success it replaces `target` in one rename."""
    stage = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    stage.chmod(0o777 & ~_umask())  # mkdtemp makes 0700: a shipped folder must be readable like any other
    try:
        yield stage
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            target.rename(old)
            stage.rename(target)
            shutil.rmtree(old)
        else:
            stage.rename(target)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def append_jsonl(handle: TextIO, row: dict[str, Any]) -> None:
    handle.write(json.dumps(row) + "\n")
    handle.flush()


MANIFEST = "manifest.json"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(folder: Path, extra: dict[str, Any] | None = None) -> None:
    """Record the sha256 of every file in `folder`; written last, so its presence means complete."""
    files = {p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST}
    write_json(folder / MANIFEST, {"files": files, **(extra or {})})


def verify_manifest(folder: Path) -> None:
    """Raise `RunError` if a file listed in the folder's manifest is missing or changed."""
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return
    for name, expected in json.loads(manifest.read_text(encoding="utf-8"))["files"].items():
        path = folder / name
        if not path.is_file():
            raise RunError(f"{path} is missing (listed in {manifest}); the folder is incomplete")
        if sha256_file(path) != expected:
            raise RunError(f"{path} does not match its sha256 in {manifest}: the file is corrupted or was changed")

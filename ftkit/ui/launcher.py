"""Training started from the browser: `ftkit train` in a background process, and its stop button.

The recipe is validated here first (`load_recipe` with the overrides), so a bad key or value is
shown in the form, not found in a log. The run always goes to `<runs root>/<name>`: the UI shows
only what is below its root. The process is the ordinary CLI (`python -m ftkit.cli train ...`) in
its own session, its output in `<root>/.ftkit-ui/<name>.log`; stopping sends SIGINT to its
process group, which `ftkit train` answers like Ctrl-C: the completed checkpoints stay, and
`--resume` (from the form or the terminal) continues the run.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from ftkit.errors import FtkitError
from ftkit.recipe import RecipeError, load_recipe
from ftkit.runs import RunDir, check_target

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
STATE_DIR = ".ftkit-ui"


class LaunchError(FtkitError):
    """A run the form cannot start; `problems` has one line each, shown beside the form."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass
class Launch:
    run: RunDir
    process: subprocess.Popen[bytes]
    log: Path
    exit_code: int | None = None


@dataclass
class Launcher:
    """Starts runs below `root` from recipes below `recipes` (the folder `ftkit ui` was started in, by
    default): a form may name only those, so the UI reads no file elsewhere."""

    root: Path
    recipes: Path
    launches: dict[str, Launch] = field(default_factory=dict)  # resolved run path -> its launch
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def known_recipes(self, limit: int = 200) -> list[str]:
        """The YAML files below the recipes folder (not below hidden folders or runs), for the form to offer."""
        found = []
        for path in sorted(self.recipes.rglob("*.y*ml")):
            rel = path.relative_to(self.recipes)
            if (
                path.suffix in (".yaml", ".yml")
                and not any(p.startswith(".") for p in rel.parts)
                and "runs" not in rel.parts
            ):
                found.append(rel.as_posix())
            if len(found) >= limit:
                break
        return found

    def exit_codes(self) -> dict[str, int | None]:
        return {path: launch.exit_code for path, launch in self.launches.items()}

    def start(self, recipe: str, overrides: list[str], name: str, mode: str = "new") -> Launch:
        """Validate, then start `ftkit train` for `<root>/<name>`; `mode` is new, overwrite or resume."""
        if not NAME.fullmatch(name):
            raise LaunchError([f"run name {name!r}: use letters, digits, '.', '_' and '-' (e.g. sentiment-r8)"])
        path = (self.recipes / recipe).resolve()
        allowed = (self.recipes.resolve(), self.root.resolve())
        if not any(path.is_relative_to(folder) for folder in allowed):
            raise LaunchError(
                [f"recipe {recipe!r}: only recipes below {allowed[0]} or {allowed[1]} can be started here"]
            )
        if not path.is_file() or path.suffix not in (".yaml", ".yml"):
            raise LaunchError([f"recipe {recipe!r}: no such YAML file below {allowed[0]} (e.g. recipes/x.yaml)"])
        run = RunDir((self.root / name).resolve())
        every = [*overrides, f"output.dir={run.path}"]
        try:
            load_recipe(path, every)
            check_target(run, overwrite=mode == "overwrite", resume=mode == "resume")
        except RecipeError as error:
            raise LaunchError(error.problems) from None
        except FtkitError as error:
            raise LaunchError(str(error).splitlines()) from None
        with self._lock:
            earlier = self.launches.get(str(run.path))
            if earlier is not None and earlier.exit_code is None:
                raise LaunchError([f"{name} is already running; stop it first"])
            log = self.root / STATE_DIR / f"{name}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            flags = {"new": [], "overwrite": ["--overwrite"], "resume": ["--resume"]}[mode]
            command = [sys.executable, "-m", "ftkit.cli", "train", str(path.resolve()), *every, *flags]
            with log.open("wb") as out:
                process = subprocess.Popen(
                    command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
                )
            launch = Launch(run, process, log)
            self.launches[str(run.path)] = launch
        threading.Thread(target=self._wait, args=(launch,), daemon=True).start()
        return launch

    @staticmethod
    def _wait(launch: Launch) -> None:
        launch.exit_code = launch.process.wait()

    def stop(self, run: RunDir) -> bool:
        """Interrupt a run this UI started (SIGINT to its process group, as Ctrl-C); False if it is not running."""
        launch = self.launches.get(str(run.path.resolve()))
        if launch is None or launch.exit_code is not None:
            return False
        os.killpg(launch.process.pid, signal.SIGINT)
        return True

    def log_tail(self, run: RunDir, limit: int = 4000) -> str | None:
        launch = self.launches.get(str(run.path.resolve()))
        if launch is None or not launch.log.is_file():
            return None
        data = launch.log.read_bytes()[-limit:]
        return data.decode("utf-8", errors="replace")

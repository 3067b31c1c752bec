"""The search space: recipe keys in dotted form, each a list of choices or a range, checked like a recipe.

A space file is a flat YAML mapping, e.g.::

    adapter.r: [4, 8, 16, 32]                                  # choices (categorical)
    train.learning_rate: {low: 1.0e-5, high: 1.0e-3, log: true}  # a float range
    train.max_steps: {low: 10, high: 40, step: 10}             # an int range (both ends ints)

Every key and every end of every range is applied to the recipe as an override and validated there, so an
unknown key gets the recipe's "did you mean", and an out-of-range value the recipe's own message, naming the
space file's line. Keys that would change the data (data.*, task.*, model.source) are refused: a sweep
tokenises its data once, and its trials must differ only in how they train; eval.* and output.* are what
the sweep measures and where it writes, so they are the sweep's, not a trial's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ftkit import paths
from ftkit.errors import FtkitError
from ftkit.recipe import RecipeError, load_recipe

FIXED = ("data.", "task.", "eval.", "output.", "model.source", "name")  # what every trial shares
RANGE_KEYS = {"low", "high", "log", "step"}
Choice = bool | int | float | str


class SpaceError(FtkitError):
    """A space file that does not describe a search over this recipe."""


@dataclass(frozen=True)
class Dimension:
    """One searched key: a list of `choices`, or a range from `low` to `high` (log-uniform when `log`)."""

    key: str
    line: int
    choices: tuple[Choice, ...] | None = None
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    step: float | None = None

    @property
    def integer(self) -> bool:
        return self.choices is None and all(isinstance(v, int) for v in (self.low, self.high, self.step or 1))

    def ends(self) -> list[Choice]:
        """The values whose validity proves the whole dimension valid (every choice, or both ends)."""
        return list(self.choices) if self.choices is not None else [self.low, self.high]

    def suggest(self, trial: Any) -> Choice:
        """This dimension's value for an Optuna trial (the sampler decides)."""
        if self.choices is not None:
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.key, float(self.low), float(self.high), log=self.log, step=self.step)


@dataclass(frozen=True)
class Space:
    path: Path
    dimensions: tuple[Dimension, ...]

    @property
    def is_grid(self) -> bool:
        """Every dimension a list: the grid sampler can visit every combination."""
        return all(d.choices is not None for d in self.dimensions)

    def grid(self) -> dict[str, list[Choice]]:
        return {d.key: list(d.choices or ()) for d in self.dimensions}

    @property
    def size(self) -> int | None:
        """How many combinations a grid has (None for a space with ranges)."""
        if not self.is_grid:
            return None
        size = 1
        for d in self.dimensions:
            size *= len(d.choices or ())
        return size


def override(key: str, value: Choice) -> str:
    """`key=value` as the recipe's overrides parse it (YAML: floats keep their dot, `1.0e-05`)."""
    text = yaml.safe_dump(value, default_flow_style=True).splitlines()[0]
    return f"{key}={text}"


def overrides(params: dict[str, Choice]) -> list[str]:
    return [override(key, value) for key, value in params.items()]


def load_space(path: Path, recipe_path: Path, recipe_overrides: Sequence[str] = ()) -> Space:
    """Read and check a space file against the recipe; every problem at once, one line each."""
    unusable = paths.problem(path)
    if unusable is not None:
        raise SpaceError(f"--space {path}: {unusable}")
    try:
        text = path.read_text(encoding="utf-8")
        raw = yaml.safe_load(text)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except (UnicodeDecodeError, yaml.YAMLError) as error:
        raise SpaceError(f"{path}: not a YAML space file ({str(error).splitlines()[0]})") from None
    if not isinstance(raw, dict) or not raw:
        raise SpaceError(f"{path}: a space is a YAML mapping of dotted recipe keys, e.g. 'adapter.r: [4, 8, 16]'")
    lines = {str(k.value): k.start_mark.line + 1 for k, _ in getattr(node, "value", [])}
    problems: list[str] = []
    dimensions = []
    for key, spec in raw.items():
        where = f"{path}:{lines.get(str(key), 1)}"
        try:
            dimension = _dimension(str(key), spec, lines.get(str(key), 1))
        except ValueError as error:
            problems.append(f"{where}: {key}: {error}")
            continue
        problems += [f"{where}: {p}" for p in _check_in_recipe(dimension, recipe_path, recipe_overrides)]
        dimensions.append(dimension)
    if problems:
        raise RecipeError(problems)
    return Space(path, tuple(dimensions))


def _dimension(key: str, spec: Any, line: int) -> Dimension:
    if any(key == fixed or key.startswith(fixed) for fixed in FIXED):
        raise ValueError(
            "every trial of a sweep shares the data, task, evaluation and output (the data is tokenised once); "
            "set it in the recipe or as an override, and search over model.*, adapter.* or train.* keys"
        )
    if isinstance(spec, list):
        if not spec or not all(isinstance(v, Choice) for v in spec) or len(set(map(repr, spec))) < len(spec):
            raise ValueError("choices must be a non-empty list of distinct numbers, strings or booleans")
        return Dimension(key, line, choices=tuple(spec))
    if isinstance(spec, dict):
        unknown = set(spec) - RANGE_KEYS
        if unknown or not {"low", "high"} <= set(spec):
            raise ValueError(f"a range is {{low: L, high: H}} with optional log: true and step: S (got {spec})")
        low, high, step = spec["low"], spec["high"], spec.get("step")
        numbers = [v for v in (low, high, step) if v is not None]
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in numbers):
            raise ValueError(f"low, high and step must be numbers (got {spec})")
        if low >= high:
            raise ValueError(f"low ({low}) must be below high ({high})")
        log = bool(spec.get("log", False))
        if log and (low <= 0 or step is not None):
            raise ValueError("log: true needs low > 0 and no step")
        return Dimension(key, line, low=low, high=high, log=log, step=step)
    raise ValueError("expected a list of choices or a range {low: L, high: H, log: true}")


def _check_in_recipe(dimension: Dimension, recipe_path: Path, recipe_overrides: Sequence[str]) -> list[str]:
    """The recipe's own problems with each end of the dimension, without the 'override ...' prefix."""
    found: list[str] = []
    for value in dimension.ends():
        applied = override(dimension.key, value)
        try:
            load_recipe(recipe_path, [*recipe_overrides, applied])
        except RecipeError as error:
            found += [p.removeprefix(f"override '{applied}': ") for p in error.problems if p not in found]
            if any("unknown key" in p for p in error.problems):
                break  # one line for an unknown key, not one per value
    return list(dict.fromkeys(found))

"""What to answer with: a run directory, an adapter folder or a model folder, and the one base model
that every target of a process shares.

A target is a run directory (`recipe.yaml` + `adapter/`), an adapter folder (`adapter_config.json`)
or a plain model folder (`config.json`, e.g. a merged export). Everything here is checked before
any weight is loaded.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from ftkit.errors import FtkitError
from ftkit.recipe import ModelConfig

log = logging.getLogger(__name__)

BASE_NAME = "base"


class DeployError(FtkitError):
    """A target that cannot be loaded for chat or serving."""


@dataclass(frozen=True)
class Target:
    """One thing to answer with: a base model and, unless it is a plain model folder, an adapter."""

    name: str
    model: ModelConfig
    adapter: Path | None = None


def resolve_target(path: Path, taken: Sequence[str] = ()) -> Target:
    """Tell a run directory, an adapter folder and a model folder apart, and find each one's base.

    A run's base is its recipe's `model` section, read on its own: the recipe's data files may be
    gone on the machine that serves the adapter. An adapter folder's base is the one its lineage
    records (`lineage.base_config`).
    """
    from ftkit import lineage
    from ftkit.runs import ADAPTER_CONFIG, RunDir, adapter_name, is_adapter_folder

    run = RunDir(path)
    if run.recipe.is_file() and is_adapter_folder(run.adapter):
        return Target(_unique(path.resolve().name, taken), lineage.base_config(run.adapter), run.adapter)
    if run.recipe.is_file():
        raise DeployError(
            f"{path} is a run directory without a finished adapter (no {run.adapter / ADAPTER_CONFIG}); "
            "finish training it first (ftkit train RECIPE --resume)"
        )
    if is_adapter_folder(path):
        return Target(_unique(adapter_name(path), taken), lineage.base_config(path), path)
    if (path / "config.json").is_file():
        try:
            return Target(BASE_NAME, ModelConfig(source=str(path.resolve()), quantization="none"))
        except ValidationError as error:  # a config.json, but not a model folder
            raise DeployError(f"{path}: {error.errors()[0]['msg'].removeprefix('Value error, ')}") from None
    raise DeployError(
        f"{path} is not a run directory (recipe.yaml + adapter/), an adapter folder (adapter_config.json) "
        "or a model folder (config.json)"
    )


def _unique(label: str, taken: Sequence[str]) -> str:
    """Adapter names double as API model names: two runs with one name get -1, -2 suffixes."""
    if label == BASE_NAME or label in taken:
        return f"{label}-{len(taken) + 1}"
    return label


def shared_base(targets: Sequence[Target], quantization: str | None) -> ModelConfig:
    """The one base model every target runs on (with `quantization` if given), or a clear refusal.

    Sources are compared once resolved ('default' and the folder it converts to are one base);
    the adapters' lineage check compares the weights themselves when they are loaded.
    """
    from ftkit.models import resolve_source

    first = targets[0].model
    for target in targets[1:]:
        if (resolve_source(target.model.source), target.model.revision) != (
            resolve_source(first.source),
            first.revision,
        ):
            raise DeployError(
                f"'{target.name}' was trained on {target.model.source} but '{targets[0].name}' on {first.source}; "
                "one process serves adapters of one base model: start one server per base"
            )
    base = first.model_copy(update={"quantization": quantization}) if quantization else first
    for target in targets:
        if target.adapter is not None and target.model.quantization != base.quantization:
            log.warning(
                "warning: '%s' was trained with quantization %s and runs with %s here; its answers may "
                "differ from its evaluation (--quantization %s matches it)",
                target.name,
                target.model.quantization,
                base.quantization,
                target.model.quantization,
            )
    return base


def resolve_targets(paths: Sequence[Path], quantization: str | None = None) -> tuple[list[Target], ModelConfig]:
    """Every path's target and their one shared base, checked before anything is loaded."""
    targets: list[Target] = []
    for path in paths:
        targets.append(resolve_target(path, [t.name for t in targets]))
    return targets, shared_base(targets, quantization)

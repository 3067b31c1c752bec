"""Task registry. Each module in this package defines one task; they are discovered on import."""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING, Annotated, TypeAlias, Union

from pydantic import Field

from ftkit.tasks.base import _REGISTRY, Example, Probe, Task, TaskOptions

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base" and not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")


def task_names() -> list[str]:
    return sorted(_REGISTRY)


def get_task(options: TaskOptions, max_length: int) -> Task:
    """The task instance for a validated `task:` section of a recipe."""
    return _REGISTRY[options.name](options, max_length)


# The recipe's `task:` section: one options model per task, chosen by its `name`. The union is
# built from the registry at import time, which a static checker cannot follow; to it, the
# section is what every member is, a `TaskOptions` (narrow with isinstance for a task's own keys).
if TYPE_CHECKING:
    TaskSection: TypeAlias = TaskOptions
else:
    TaskSection = Annotated[
        Union[tuple(_REGISTRY[name].Options for name in task_names())],  # noqa: UP007
        Field(discriminator="name"),
    ]

__all__ = ["Example", "Probe", "Task", "TaskOptions", "TaskSection", "get_task", "task_names"]

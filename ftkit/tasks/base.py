"""The task protocol: the one extension point of ftkit.

A task says how a data row becomes a training example, how the model predicts for evaluation,
and which metrics judge the predictions. Everything else (loading, training, reporting) is
task-agnostic, so adding a task means adding one module under `ftkit/tasks/` that defines a
`Task` subclass decorated with `@register`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from ftkit.data.encoding import Encoded, encode_prompt_completion
from ftkit.errors import RowError


class TaskOptions(BaseModel):
    """Base of each task's `task:` section in the recipe; subclasses add a `name` literal."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class Example:
    """One row made ready for training and evaluation.

    `prompt` carries no loss; `completion` is what the model learns to produce (the tokenizer's
    EOS is appended when encoding). `reference` is what metrics compare predictions with.
    """

    prompt: str
    completion: str
    reference: Any
    where: str  # "file:row", for error messages
    messages: tuple[dict[str, str], ...] | None = None  # whole conversation, for chat tasks
    content: str = ""  # the row's own input text (no template), compared for train/test duplicates


Progress = Callable[[int], None]  # called with the number of examples just finished


class Task(ABC):
    """A kind of work the model is adapted for. Subclasses set the class variables below."""

    name: ClassVar[str]
    Options: ClassVar[type[TaskOptions]]
    columns: ClassVar[tuple[str, ...]]  # canonical column names a row may carry
    metrics: ClassVar[tuple[str, ...]]  # keys of what `score` returns; the first is the primary metric
    lower_is_better: ClassVar[frozenset[str]] = frozenset()  # metrics where smaller is better (perplexity)

    def __init__(self, options: TaskOptions, max_length: int) -> None:
        self.options = options
        self.max_length = max_length  # data.max_length: training and evaluation truncate alike

    @abstractmethod
    def make_example(self, row: Mapping[str, Any], where: str) -> Example:
        """Turn a row (already column-mapped) into an example, or raise `RowError`."""

    def encode(self, example: Example, tokenizer: Any) -> Encoded:
        """Tokenise prompt + completion + EOS with loss on the completion and EOS only."""
        return encode_prompt_completion(tokenizer, example.prompt, example.completion, self.max_length)

    @abstractmethod
    def predict(
        self, model: Any, tokenizer: Any, examples: Sequence[Example], batch_size: int, progress: Progress
    ) -> list[Any]:
        """Predict for each example, in order, without holding logits for the whole set."""

    @abstractmethod
    def score(self, predictions: Sequence[Any], examples: Sequence[Example], only: str | None = None) -> dict[str, float]:
        """Corpus-level metrics, keyed by metric name (just `only`, when given: the bootstrap asks one at a time)."""

    def label_of(self, example: Example) -> str | None:
        """The example's class, for tasks that classify (shown as label balance); None otherwise."""
        return None

    def needs_training_data(self) -> bool:
        """Whether `observe` must see the training examples before this task can predict."""
        return False

    def observe(self, train: Sequence[Example]) -> None:
        """Learn settings left to the data from the training examples (e.g. the label set)."""

    def confusion(self, predictions: Sequence[Any], examples: Sequence[Example]) -> tuple[list[str], list[list[int]]] | None:
        """(labels, matrix with rows = reference, columns = prediction) for classification tasks; else None."""
        return None

    def per_example(self, predictions: Sequence[Any], examples: Sequence[Example]) -> dict[str, list[float]]:
        """Per-example values of the metrics whose corpus value is their mean.

        Their confidence intervals and paired tests resample these numbers directly (vectorised)
        instead of recomputing the metric a thousand times. The first metric's values also rank
        what an adapter fixed or broke (without them, a prediction is right when it equals the reference).
        """
        return {}


def batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def render(template: str, row: Mapping[str, Any], where: str) -> str:
    """Fill a `{field}` prompt template, naming the missing field if the template asks for one."""
    try:
        return template.format_map(row)
    except KeyError as missing:
        raise RowError(f"{where}: the prompt template uses {missing} but the row has no such field") from None


_REGISTRY: dict[str, type[Task]] = {}


def register(cls: type[Task]) -> type[Task]:
    """Class decorator that makes a task available to recipes under `task.name`."""
    _REGISTRY[cls.name] = cls
    return cls

"""The task protocol: the one extension point of ftkit.

A task says everything that depends on the kind of work: which row shapes it accepts and how a
row becomes a training example, how it is tokenised, how the model predicts for evaluation,
which metrics judge the predictions and which paired test suits each, what a report shows of an
example and its prediction, and which prompt a probe or a server feeds the model. Loading,
training, evaluation, merging and serving ask the task and name none, so adding a task means
adding one module under `ftkit/tasks/` that defines a `Task` subclass decorated with `@register`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict

from ftkit.data.encoding import Encoded, encode_prompt_completion, last_span_start, truncate_middle
from ftkit.errors import FtkitError, RowError
from ftkit.evaluation.inference import generate_greedy

Row = dict[str, Any]
Progress = Callable[[int], None]  # called with the number of examples just finished
PairedTest = Literal["mcnemar", "bootstrap"]
T = TypeVar("T")


class TaskOptions(BaseModel):
    """Base of each task's `task:` section in the recipe; subclasses add a `name` literal."""

    model_config = ConfigDict(extra="forbid")
    name: str


@dataclass(frozen=True)
class Example:
    """One row made ready for training and evaluation.

    `prompt` carries no loss; `completion` is what the model learns to produce (the tokenizer's
    EOS is appended when encoding). `reference` is what metrics compare predictions with.
    `content` is the row's own input text (no template): compared for train/test duplicates.
    Tasks that need more (a whole conversation) subclass this in their own module.
    """

    prompt: str
    completion: str
    reference: Any
    where: str  # "file:row", for error messages
    content: str = ""


@dataclass(frozen=True)
class Probe:
    """One example as token ids: the whole sequence (for logits) and the prompt that asks for its last answer."""

    full: list[int]
    prompt: list[int]


class Task(ABC):
    """A kind of work the model is adapted for. Subclasses set the class variables below."""

    name: ClassVar[str]
    Options: ClassVar[type[TaskOptions]]
    columns: ClassVar[tuple[str, ...]]  # canonical column names a row may carry
    metrics: tuple[str, ...]  # keys of what `score` returns; the first is the primary metric
    lower_is_better: frozenset[str] = frozenset()  # metrics where smaller is better (perplexity)
    binary_metrics: frozenset[str] = frozenset()  # per-example 0/1 metrics: compared with McNemar's exact test

    def __init__(self, options: TaskOptions, max_length: int) -> None:
        self.options = options
        self.max_length = max_length  # data.max_length: training and evaluation truncate alike

    # --- rows to examples ---------------------------------------------------------------------

    def convert_row(self, row: Row) -> Row:
        """Convert a common dataset shape (alpaca, ShareGPT, ...) to this task's columns; default: as is."""
        return row

    @abstractmethod
    def make_example(self, row: Mapping[str, Any], where: str) -> Example:
        """Turn a row (already column-mapped and converted) into an example, or raise `RowError`."""

    def encode(self, example: Example, tokenizer: Any) -> Encoded:
        """Tokenise prompt + completion + EOS with loss on the completion and EOS only."""
        return encode_prompt_completion(tokenizer, example.prompt, example.completion, self.max_length)

    def probe(self, example: Example, tokenizer: Any) -> Probe:
        """The example's tokens, and the prompt a probe or a server feeds to ask for its last answer:
        everything before the last span that carries loss (the final reply of a multi-turn chat)."""
        encoded = self.encode(example, tokenizer)
        return Probe(full=encoded.input_ids, prompt=encoded.input_ids[: last_span_start(encoded.labels)])

    def label_of(self, example: Example) -> str | None:
        """The example's class, for tasks that classify (shown as label balance); None otherwise."""
        return None

    def needs_training_data(self) -> bool:
        """Whether `observe` must see the training examples before this task can predict."""
        return False

    def observe(self, train: Sequence[Example]) -> None:  # noqa: B027 - optional hook
        """Learn settings left to the data from the training examples (e.g. the label set)."""

    # --- prediction and metrics -------------------------------------------------------------

    @abstractmethod
    def predict(
        self, model: Any, tokenizer: Any, examples: Sequence[Example], batch_size: int, progress: Progress
    ) -> list[Any]:
        """Predict for each example, in order, without holding logits for the whole set."""

    @abstractmethod
    def scorers(self, predictions: Sequence[Any], examples: Sequence[Example]) -> Mapping[str, Callable[[], float]]:
        """One zero-argument function per metric in `metrics`, each computing that corpus-level metric."""

    def score(
        self, predictions: Sequence[Any], examples: Sequence[Example], only: str | None = None
    ) -> dict[str, float]:
        """Corpus-level metrics, keyed by name; just `only` when given (the bootstrap asks one at a time)."""
        return {
            name: compute() for name, compute in self.scorers(predictions, examples).items() if only in (None, name)
        }

    def per_example(self, predictions: Sequence[Any], examples: Sequence[Example]) -> dict[str, list[float]]:
        """Per-example values of the metrics whose corpus value is their mean (accuracy, token F1, ...).

        Their confidence intervals and paired tests resample these numbers directly (vectorised)
        instead of recomputing the metric a thousand times; the others are recomputed per resample.
        """
        return {}

    def example_scores(self, predictions: Sequence[Any], examples: Sequence[Example]) -> list[float]:
        """One number per example, higher is better, that ranks what an adapter fixed or broke in a report.
        Default: the primary metric's per-example values; a task whose primary metric has none overrides this."""
        values = self.per_example(predictions, examples)
        if self.metrics[0] not in values:
            raise TypeError(f"task '{self.name}': per_example gives no '{self.metrics[0]}'; override example_scores")
        return values[self.metrics[0]]

    def generate(
        self,
        model: Any,
        tokenizer: Any,
        examples: Sequence[Example],
        batch_size: int,
        progress: Progress,
        max_new_tokens: int,
    ) -> list[str]:
        """Greedy replies to each example's prompt, batched; a long prompt loses its middle so that the
        prompt and `max_new_tokens` fit `data.max_length`. For tasks that predict by generating."""
        budget = self.max_length - max_new_tokens
        replies: list[str] = []
        for batch in batches(examples, batch_size):
            prompts = [truncate_middle(tokenizer(e.prompt)["input_ids"], budget) for e in batch]
            replies += generate_greedy(model, tokenizer, prompts, max_new_tokens)
            progress(len(batch))
        return replies

    def paired_test(self, metric: str) -> PairedTest:
        """McNemar's exact test for per-example 0/1 metrics, a paired bootstrap for the others."""
        return "mcnemar" if metric in self.binary_metrics else "bootstrap"

    def confusion(
        self, predictions: Sequence[Any], examples: Sequence[Example]
    ) -> tuple[list[str], list[list[int]]] | None:
        """(labels, matrix with rows = reference, columns = prediction) for classification tasks; else None."""
        return None

    # --- what reports show -------------------------------------------------------------------

    def size(self, example: Example) -> int:
        """A rough length (characters) of the model's input, to batch similar lengths together."""
        return len(example.prompt)

    def shown_input(self, example: Example) -> str:
        """The input as one line of a report (report.md's fixed and broken examples)."""
        return example.prompt

    def recorded_input(self, example: Example) -> Any:
        """The input as predictions.jsonl records it (any JSON value)."""
        return example.prompt

    def shown_prediction(self, prediction: Any) -> Any:
        """A prediction as a report shows it beside the reference."""
        return prediction


def batches(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def render(template: str, row: Mapping[str, Any], where: str) -> str:
    """Fill a `{field}` prompt template, naming the missing field if the template asks for one."""
    try:
        return template.format_map(row)
    except KeyError as missing:
        raise RowError(f"{where}: the prompt template uses {missing} but the row has no such field") from None


def alpaca_prompt(row: Mapping[str, Any]) -> str:
    """An alpaca row's instruction, with its optional `input` appended (what the model is asked)."""
    extra = row.get("input")
    return f"{row['instruction']}\n\n{extra}" if isinstance(extra, str) and extra.strip() else str(row["instruction"])


_REGISTRY: dict[str, type[Task]] = {}


def register(cls: type[Task]) -> type[Task]:
    """Class decorator that makes a task available to recipes under `task.name`; a name is taken once."""
    if cls.name in _REGISTRY:
        taken = _REGISTRY[cls.name]
        raise FtkitError(
            f"task name '{cls.name}' is registered twice: {taken.__module__}.{taken.__qualname__} and "
            f"{cls.__module__}.{cls.__qualname__}; give the new task another name"
        )
    _REGISTRY[cls.name] = cls
    return cls

"""The task protocol: the one extension point of ftkit.

A task says everything that depends on the kind of work: which row shapes it accepts and how a
row becomes a training example, how it is tokenised, how the model predicts for evaluation,
which metrics judge the predictions and which paired test suits each, what a report shows of an
example and its prediction, and which prompt a probe or a server feeds the model. Loading,
training, evaluation, merging and serving ask the task and name none, so adding a task means
adding one module under `ftkit/tasks/` that defines a `Task` subclass decorated with `@register`.
"""

from __future__ import annotations

import string
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

from ftkit.data.encoding import Encoded, encode_prompt_completion, last_span_start, truncate_middle
from ftkit.errors import FtkitError, RowError

Row = dict[str, Any]
Progress = Callable[[int], None]  # called with the number of examples just finished
PairedTest = Literal["mcnemar", "bootstrap"]
R = TypeVar("R")


@dataclass(frozen=True)
class Slots:
    """The `{field}`s a prompt template may use (`allowed`) and those it must (`required`).

    A task declares them per template option (`TaskOptions.templates`): the row columns it renders
    and any it fills itself (extract's `{field_list}`). A template that leaves out a required field
    would train every example on the same prompt; one that uses another name fails on the first row.
    """

    allowed: frozenset[str]
    required: frozenset[str]


def slots(*allowed: str, required: tuple[str, ...] | None = None) -> Slots:
    """`Slots` from field names; every allowed field is required unless `required` says otherwise."""
    return Slots(frozenset(allowed), frozenset(allowed if required is None else required))


class TaskOptions(BaseModel):
    """Base of each task's `task:` section in the recipe; subclasses add a `name` literal.

    `templates` maps each option that holds a prompt template to its `Slots`; every such option is
    parsed when the recipe is validated (`check_template`), so `ftkit validate` catches what
    `ftkit data` would otherwise hit on the first row.
    """

    model_config = ConfigDict(extra="forbid")
    templates: ClassVar[Mapping[str, Slots]] = {}
    name: str

    @field_validator("*")
    @classmethod
    def _templates_parse(cls, value: Any, info: ValidationInfo) -> Any:
        declared = cls.templates.get(info.field_name or "")
        if declared is not None and isinstance(value, str):
            check_template(value, declared)
        return value


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

    def sufficient_statistics(self, predictions: Sequence[Any], examples: Sequence[Example]) -> dict[str, Any]:
        """Metrics that are not means but functions of summed per-example statistics (chrF of its n-gram
        counts), as `ftkit.evaluation.stats.SumStatistic`s: their intervals and paired tests resample by
        index sums instead of recomputing the metric a thousand times. Default: none."""
        return {}

    def example_scores(self, predictions: Sequence[Any], examples: Sequence[Example]) -> list[float]:
        """One number per example, higher is better, that ranks what an adapter fixed or broke in a report.
        Default: the primary metric's per-example values; a task whose primary metric has none overrides this."""
        values = self.per_example(predictions, examples)
        if self.metrics[0] not in values:
            raise TypeError(f"task '{self.name}': per_example gives no '{self.metrics[0]}'; override example_scores")
        return values[self.metrics[0]]

    # --- what evaluation feeds the model ----------------------------------------------------------

    eval_cut: ClassVar[str] = "the middle of the prompt"  # what `predict` drops from an input over budget

    def eval_prompt_ids(self, example: Example, tokenizer: Any) -> list[int]:
        """The token ids `predict` feeds for this example before cutting it to `eval_budget`."""
        return list(tokenizer(example.prompt)["input_ids"])

    def eval_budget(self, tokenizer: Any) -> int:
        """How many prompt tokens `predict` keeps: data.max_length less what the answer needs.
        Evaluation counts the examples over it (they lose `eval_cut`) and reports them."""
        return self.max_length - getattr(self.options, "max_new_tokens", 0)

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
        from ftkit.evaluation.inference import generate_greedy  # torch: only when predicting, not to validate

        budget = self.max_length - max_new_tokens
        prompts = [truncate_middle(self.eval_prompt_ids(e, tokenizer), budget) for e in examples]

        def reply(batch: list[int]) -> list[str]:
            return generate_greedy(model, tokenizer, [prompts[row] for row in batch], max_new_tokens)

        return by_length(prompts, batch_size, reply, progress)

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


def length_batches(rows: Sequence[Sequence[int]], size: int) -> Iterator[list[int]]:
    """The indices of `rows` in batches of `size`, shortest rows first. A batched forward pads every row to its
    longest, so rows of similar length waste little of it on padding."""
    order = sorted(range(len(rows)), key=lambda row: len(rows[row]))
    for start in range(0, len(order), size):
        yield order[start : start + size]


def by_length(
    rows: Sequence[Sequence[int]], size: int, run: Callable[[list[int]], Sequence[R]], progress: Progress
) -> list[R]:
    """`run` over the `length_batches` of `rows` (it gets a batch's indices, returns one result per index),
    with each result put back at its row's index, so the results are in input order."""
    results: dict[int, R] = {}
    for batch in length_batches(rows, size):
        results.update(zip(batch, run(batch), strict=True))
        progress(len(batch))
    return [results[row] for row in range(len(rows))]


class TemplateError(ValueError):
    """A prompt template that is not a plain `{field}` template of the task's fields."""


_FORMATTER = string.Formatter()


def _fields(template: str) -> Iterator[tuple[int, str]]:
    """(1-based position, text between the braces) of each field; `{{` and `}}` are literal braces.

    Scanned by hand rather than by `string.Formatter().parse` alone, which says "Single '}'
    encountered" without saying where.
    """
    i = 0
    while i < len(template):
        char = template[i]
        if char in "{}" and template[i + 1 : i + 2] == char:
            i += 2
            continue
        if char == "}":
            raise TemplateError(f"a single '}}' at position {i + 1} closes nothing; write '}}}}' for a literal brace")
        if char == "{":
            end, inner = template.find("}", i + 1), template.find("{", i + 1)
            if end < 0:
                raise TemplateError(f"the '{{' at position {i + 1} is never closed; write '{{{{' for a literal brace")
            if 0 <= inner < end:
                raise TemplateError(
                    f"a '{{' at position {inner + 1} inside the field opened at position {i + 1}; "
                    "fields cannot nest (write '{{' for a literal brace)"
                )
            yield i + 1, template[i + 1 : end]
            i = end
        i += 1


def _field_name(position: int, inside: str) -> str:
    """The plain field name between a pair of braces, or a `TemplateError` saying which trick it tries."""
    [(_, name, spec, conversion)] = list(_FORMATTER.parse("{" + inside + "}"))
    shown = "{" + inside + "}"
    if conversion:
        raise TemplateError(f"{shown} at position {position}: conversions (!r, !s, !a) are not allowed")
    if spec:
        raise TemplateError(f"{shown} at position {position}: format specs (':...') are not allowed")
    name = name or ""
    if not name or name.isdigit():
        raise TemplateError(f"{shown} at position {position}: name the field, e.g. {{text}}")
    if not name.isidentifier():
        what = "index access ([...])" if "[" in name else "attribute access (.name)" if "." in name else "this name"
        raise TemplateError(f"{shown} at position {position}: {what} is not allowed; use a plain field name")
    return name


def parse_template(template: str) -> list[tuple[str, str | None]]:
    """The template as (literal text, field name or None) pieces, under the restricted rules.

    Only plain `{name}` fields: no attribute or index access (`{text.__class__}` walks Python
    objects), no conversions, no format specs (`{text:>999999999}` allocates a gigabyte).
    """
    names = iter([_field_name(position, inside) for position, inside in _fields(template)])
    return [(literal, None if field is None else next(names)) for literal, field, _, _ in _FORMATTER.parse(template)]


def check_template(template: str, allowed: Slots) -> list[str]:
    """The template's field names, or a `TemplateError` for a syntax problem, an unknown or a missing field."""
    used = [field for _, field in parse_template(template) if field is not None]
    choices = ", ".join("{" + f + "}" for f in sorted(allowed.allowed))
    unknown = [f for f in used if f not in allowed.allowed]
    if unknown:
        raise TemplateError(f"unknown field {{{unknown[0]}}}; this template may use {choices}")
    missing = sorted(allowed.required - set(used))
    if missing:
        raise TemplateError(
            f"the template does not use {{{missing[0]}}}, so every example would get the same prompt; "
            f"add {{{missing[0]}}} where the input goes"
        )
    return used


def render(template: str, row: Mapping[str, Any], where: str) -> str:
    """Fill a prompt template (checked by `check_template` at validation) with the row's fields, by the
    same restricted rules, naming the missing field if the row has none."""
    out = []
    for literal, field in parse_template(template):
        out.append(literal)
        if field is not None:
            if field not in row:
                raise RowError(f"{where}: the prompt template uses '{field}' but the row has no such field")
            out.append(str(row[field]))
    return "".join(out)


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

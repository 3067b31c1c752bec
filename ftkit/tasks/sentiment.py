"""Sentiment (or any single-label text classification): text in, one label word out.

Prediction scores every label option by its log-likelihood after the prompt rather than
generating freely, so a base model that would ramble still gets a fair score, and the
prediction is always one of the labels.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from pydantic import Field, field_validator

from ftkit.data.encoding import truncate_middle
from ftkit.errors import RowError
from ftkit.evaluation.metrics import compute, per_example
from ftkit.tasks.base import Example, Progress, Task, TaskOptions, by_length, register, render, slots


class SentimentOptions(TaskOptions):
    templates = {"prompt_template": slots("text")}
    name: Literal["sentiment"]
    labels: list[str] | None = Field(
        default=["negative", "positive"],
        description="The label words, in order; integer labels in the data index this list. "
        "null: the sorted set of labels in the training data.",
    )
    prompt_template: str = Field(
        default="Review: {text}\nSentiment:",
        description="{text} marks where the review goes; the label word follows the prompt after a space.",
    )

    @field_validator("labels")
    @classmethod
    def _distinct_labels(cls, labels: list[str] | None) -> list[str] | None:
        if labels is None:
            return None
        if len(labels) < 2 or len(set(labels)) != len(labels) or not all(label.strip() for label in labels):
            raise ValueError("needs at least two distinct, non-empty label words")
        return labels


@register
class Sentiment(Task):
    name = "sentiment"
    Options = SentimentOptions
    columns = ("text", "label")
    metrics = ("accuracy", "macro_f1")
    binary_metrics = frozenset({"accuracy"})
    options: SentimentOptions

    @property
    def labels(self) -> list[str]:
        if self.options.labels is None:
            raise RowError("task.labels is null and no training data was seen to infer the labels from")
        return self.options.labels

    def label_of(self, example: Example) -> str:
        return example.reference

    def needs_training_data(self) -> bool:
        return self.options.labels is None

    def observe(self, train: Sequence[Example]) -> None:
        if self.options.labels is None:
            self.options = self.options.model_copy(update={"labels": sorted({e.reference for e in train})})

    def make_example(self, row: Mapping[str, Any], where: str) -> Example:
        text, label = row.get("text"), row.get("label")
        if not isinstance(text, str) or not text.strip():
            raise RowError(f"{where}: 'text' must be a non-empty string, got {text!r:.60}")
        label = self._label_word(label, where)
        return Example(
            prompt=render(self.options.prompt_template, row, where),
            completion=f" {label}",
            reference=label,
            where=where,
            content=text,
        )

    def _label_word(self, label: Any, where: str) -> str:
        labels = self.options.labels
        if labels is None and isinstance(label, (str, int)) and not isinstance(label, bool) and str(label).strip():
            return str(label).strip()  # the label set is inferred from the training data (task.labels: null)
        labels = labels or []
        if isinstance(label, bool) or label is None:
            raise RowError(f"{where}: 'label' is {label!r}; expected one of {labels} or an index into them")
        if isinstance(label, str) and label.strip().isdigit():
            label = int(label)  # "1" from a text or CSV file is an index like 1
        if isinstance(label, int) and 0 <= label < len(labels):
            return labels[label]
        if isinstance(label, str) and label.strip() in labels:
            return label.strip()
        raise RowError(
            f"{where}: unknown label {label!r}; expected one of {labels} (task.labels) or 0..{len(labels) - 1}"
        )

    def _options(self, tokenizer: Any) -> list[list[int]]:
        """Each label as the ids it is scored by: its word after a space, then EOS."""
        return [
            tokenizer(f" {label}", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            for label in self.labels
        ]

    def eval_budget(self, tokenizer: Any) -> int:
        return self.max_length - max(len(option) for option in self._options(tokenizer))

    def predict(
        self, model: Any, tokenizer: Any, examples: Sequence[Example], batch_size: int, progress: Progress
    ) -> list[str]:
        """The most likely label option after each example's prompt (`option_search.best_options`: all of
        them scored in one pass when there are few, a search of the label trie when there are many)."""
        from ftkit.evaluation.option_search import best_options

        labels, options, budget = self.labels, self._options(tokenizer), self.eval_budget(tokenizer)
        prompts = [truncate_middle(self.eval_prompt_ids(example, tokenizer), budget) for example in examples]

        def predict(batch: list[int]) -> list[str]:
            chosen = [prompts[row] for row in batch]
            return [labels[best] for best in best_options(model, tokenizer.pad_token_id, chosen, options)]

        return by_length(prompts, batch_size, predict, progress)

    def scorers(self, predictions: Sequence[str], examples: Sequence[Example]) -> dict[str, Callable[[], float]]:
        references = [example.reference for example in examples]
        return {
            "accuracy": lambda: compute("accuracy", predictions=predictions, references=references)["accuracy"],
            "macro_f1": lambda: compute("macro_f1", predictions=predictions, references=references, labels=self.labels)[
                "macro_f1"
            ],
        }

    def per_example(self, predictions: Sequence[str], examples: Sequence[Example]) -> dict[str, list[float]]:
        return {"accuracy": per_example("accuracy", list(predictions), [e.reference for e in examples])}

    def confusion(self, predictions: Sequence[str], examples: Sequence[Example]) -> tuple[list[str], list[list[int]]]:
        references = [example.reference for example in examples]
        result = compute("macro_f1", predictions=list(predictions), references=references, labels=self.labels)
        return result["labels"], result["confusion_matrix"]

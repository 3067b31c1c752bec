"""Structured extraction (customer service): a message in, a JSON object of named fields out.

The model is trained on the reference object written as compact JSON (keys in `task.fields`
order) followed by EOS, and predicts by greedy generation; the first JSON object in the reply is
the prediction. A field's value is a string or null (absent from the message); values are
compared after trimming spaces, so `"NW-123456"` and `" NW-123456 "` are the same.

Metrics: `field_f1` (primary), micro-F1 over the (field, value) pairs that are not null, so a
model gets credit for every field it finds and pays for every one it invents or misses;
`json_valid`, the share of replies that hold a JSON object; `exact_match`, the share of examples
with every field right; and `field:<name>`, each field's own exact-match rate (a null that should be
null counts as right; a reply with no JSON object gets no field right).
The 0/1 metrics are compared with McNemar's exact test, field F1 with a paired bootstrap.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from pydantic import Field, field_validator

from ftkit.errors import RowError
from ftkit.tasks.base import Example, Progress, Task, TaskOptions, register, render, slots

Fields = dict[str, str | None]


class ExtractOptions(TaskOptions):
    templates = {"prompt_template": slots("text", "field_list", required=("text",))}
    name: Literal["extract"]
    fields: list[str] = Field(
        default=["intent", "order_id", "product", "email"],
        description="the keys of the JSON object, in the order the model writes them",
    )
    prompt_template: str = Field(
        default="Extract {field_list} from the customer message as JSON (null when absent).\nMessage: {text}\nJSON:",
        description="{text} marks where the message goes; {field_list} (optional) is task.fields joined by commas",
    )
    max_new_tokens: int = Field(default=64, ge=1, le=1024, description="longest reply generated at evaluation")

    @field_validator("fields")
    @classmethod
    def _distinct_fields(cls, fields: list[str]) -> list[str]:
        if not fields or len(set(fields)) != len(fields) or not all(f.strip() for f in fields):
            raise ValueError("needs at least one field name, each distinct and non-empty")
        return fields


def _value(value: Any) -> str | None:
    """A field value as compared: null stays null, text is trimmed, numbers and booleans as JSON writes them."""
    if value is None:
        return None
    text = value if isinstance(value, str) else json.dumps(value)
    return text.strip() or None


def parse_reply(reply: str, fields: Sequence[str]) -> Fields | None:
    """The first JSON object in a reply, reduced to `fields` (missing keys are null); None if there is none."""
    decoder = json.JSONDecoder()
    start = reply.find("{")
    while start >= 0:
        try:
            parsed, _ = decoder.raw_decode(reply, start)
        except json.JSONDecodeError:
            start = reply.find("{", start + 1)
            continue
        if isinstance(parsed, dict):
            return {name: _value(parsed.get(name)) for name in fields}
        start = reply.find("{", start + 1)
    return None


def _pairs(values: Fields | None) -> set[tuple[str, str]]:
    return {(name, value) for name, value in (values or {}).items() if value is not None}


def field_f1(predicted: Sequence[Fields | None], references: Sequence[Fields]) -> float:
    """Micro-F1 over non-null (field, value) pairs: 2·TP / (2·TP + FP + FN); 1.0 when nothing is expected or said."""
    tp = fp = fn = 0
    for guess, truth in zip(predicted, references):
        said, expected = _pairs(guess), _pairs(truth)
        tp, fp, fn = tp + len(said & expected), fp + len(said - expected), fn + len(expected - said)
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0


@register
class Extract(Task):
    name = "extract"
    Options = ExtractOptions
    columns = ("text", "fields")
    options: ExtractOptions

    def __init__(self, options: TaskOptions, max_length: int) -> None:
        super().__init__(options, max_length)
        self.metrics = ("field_f1", "json_valid", "exact_match", *(f"field:{name}" for name in self.options.fields))
        self.binary_metrics = frozenset(self.metrics[1:])

    def make_example(self, row: Mapping[str, Any], where: str) -> Example:
        text = row.get("text")
        if not isinstance(text, str) or not text.strip():
            raise RowError(f"{where}: 'text' must be a non-empty string, got {text!r:.60}")
        given = self._fields(row.get("fields"), where)
        ordered = {name: given.get(name) for name in self.options.fields}
        prompt = render(self.options.prompt_template, {**row, "field_list": ", ".join(self.options.fields)}, where)
        return Example(
            prompt=prompt,
            completion=" " + json.dumps(ordered, ensure_ascii=False),
            reference={name: _value(value) for name, value in ordered.items()},
            where=where,
            content=text,
        )

    def _fields(self, fields: Any, where: str) -> dict[str, Any]:
        """The row's `fields`: a JSON object (or a string holding one) whose keys are among task.fields."""
        if isinstance(fields, str):
            try:
                fields = json.loads(fields)
            except json.JSONDecodeError as error:
                raise RowError(f"{where}: 'fields' is a string but not JSON ({error.msg})") from None
        if not isinstance(fields, Mapping):
            raise RowError(f"{where}: 'fields' must be a JSON object of {self.options.fields}, got {fields!r:.60}")
        unknown = sorted(set(fields) - set(self.options.fields))
        if unknown:
            raise RowError(f"{where}: 'fields' has keys {unknown} that are not in task.fields {self.options.fields}")
        nested = [name for name, value in fields.items() if isinstance(value, (dict, list))]
        if nested:
            raise RowError(
                f"{where}: field {nested[0]!r} holds a {type(fields[nested[0]]).__name__}; values must be text or null"
            )
        return dict(fields)

    def predict(
        self, model: Any, tokenizer: Any, examples: Sequence[Example], batch_size: int, progress: Progress
    ) -> list[dict[str, Any]]:
        replies = self.generate(model, tokenizer, examples, batch_size, progress, self.options.max_new_tokens)
        return [{"reply": reply, "fields": parse_reply(reply, self.options.fields)} for reply in replies]

    def scorers(
        self, predictions: Sequence[dict[str, Any]], examples: Sequence[Example]
    ) -> dict[str, Callable[[], float]]:
        found = [p["fields"] for p in predictions]

        @functools.cache  # the bootstrap asks one metric per resample: the 0/1 lists only when a mean is asked
        def values() -> dict[str, list[float]]:
            return self.per_example(predictions, examples)

        def mean(metric: str) -> Callable[[], float]:
            return lambda: sum(values()[metric]) / len(values()[metric])

        return {"field_f1": lambda: field_f1(found, [e.reference for e in examples])} | {
            m: mean(m) for m in self.metrics[1:]
        }

    def per_example(self, predictions: Sequence[dict[str, Any]], examples: Sequence[Example]) -> dict[str, list[float]]:
        """0/1 per example; a reply with no JSON object gets no field right (not even the null ones)."""
        found = [p["fields"] for p in predictions]
        references = [e.reference for e in examples]

        def right(name: str) -> list[float]:
            return [float(f is not None and f.get(name) == r[name]) for f, r in zip(found, references)]

        fields = {f"field:{name}": right(name) for name in self.options.fields}
        return {
            "json_valid": [float(f is not None) for f in found],
            "exact_match": [float(all(column)) for column in zip(*fields.values())],
            **fields,
        }

    def example_scores(self, predictions: Sequence[dict[str, Any]], examples: Sequence[Example]) -> list[float]:
        """The share of an example's fields that are right."""
        values = self.per_example(predictions, examples)
        fields = [values[f"field:{name}"] for name in self.options.fields]
        return [sum(column) / len(fields) for column in zip(*fields)]

    def shown_input(self, example: Example) -> str:
        return example.content

    def shown_prediction(self, prediction: dict[str, Any]) -> str:
        return str(prediction["reply"]).strip()

"""Question answering: a question (with or without a context passage) in, a short answer out.

Prediction is greedy generation that stops at EOS (the trained end of an answer) or a newline.
Metrics are SQuAD-style exact match and token F1, each the best over the acceptable answers.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from pydantic import Field

from ftkit.errors import RowError
from ftkit.evaluation.metrics import compute, per_example
from ftkit.tasks.base import Example, Progress, Row, Task, TaskOptions, alpaca_prompt, register, render, slots


class QAOptions(TaskOptions):
    templates = {
        "prompt_template": slots("context", "question"),
        "prompt_template_no_context": slots("question"),
    }
    name: Literal["qa"]
    prompt_template: str = Field(
        default="Answer with a short phrase from the context.\nContext: {context}\nQuestion: {question}\nAnswer:",
        description="used for rows with a context",
    )
    prompt_template_no_context: str = Field(
        default="Answer with a short phrase.\nQuestion: {question}\nAnswer:", description="used for rows without one"
    )
    max_new_tokens: int = Field(default=24, ge=1, le=512, description="longest answer generated at evaluation")


def first_line(text: str) -> str:
    """The answer is the first non-empty line: a base model that starts with a newline still gets a fair score."""
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


@register
class QA(Task):
    name = "qa"
    Options = QAOptions
    columns = ("question", "context", "answer")
    metrics = ("f1", "exact_match")
    binary_metrics = frozenset({"exact_match"})
    options: QAOptions

    def convert_row(self, row: Row) -> Row:
        """SQuAD's `answers` (a list of texts or of {text, answer_start}, or the hub's {text: [...]})
        become `answer`; an alpaca row (instruction, optional input, output) a question and its answer."""
        if "answer" not in row and "answers" in row:
            return row | {"answer": _squad_answers(row["answers"])}
        if "question" in row or "instruction" not in row:
            return row
        return row | {"question": alpaca_prompt(row), "answer": row.get("output")}

    def make_example(self, row: Mapping[str, Any], where: str) -> Example:
        question, context = row.get("question"), row.get("context")
        if not isinstance(question, str) or not question.strip():
            raise RowError(f"{where}: 'question' must be a non-empty string, got {question!r:.60}")
        if context is not None and not isinstance(context, str):
            raise RowError(f"{where}: 'context' must be a string when present, got {type(context).__name__}")
        answers = self._answers(row.get("answer"), where)
        template = (
            self.options.prompt_template if context and context.strip() else self.options.prompt_template_no_context
        )
        return Example(
            prompt=render(template, row, where),
            completion=f" {answers[0]}",
            reference=answers,
            where=where,
            content=f"{context or ''} {question}".strip(),
        )

    @staticmethod
    def _answers(answer: Any, where: str) -> list[str]:
        """One acceptable answer or several; the first is the one trained on."""
        answers = answer if isinstance(answer, list) else [answer]
        answers = [str(a) if isinstance(a, (int, float)) and not isinstance(a, bool) else a for a in answers]
        if not answers or not all(isinstance(a, str) and a.strip() for a in answers):
            raise RowError(f"{where}: 'answer' must be a non-empty string or a list of them, got {answer!r:.60}")
        return [a.strip() for a in answers]

    def predict(
        self, model: Any, tokenizer: Any, examples: Sequence[Example], batch_size: int, progress: Progress
    ) -> list[str]:
        replies = self.generate(model, tokenizer, examples, batch_size, progress, self.options.max_new_tokens)
        return [first_line(reply) for reply in replies]

    def scorers(self, predictions: Sequence[str], examples: Sequence[Example]) -> dict[str, Callable[[], float]]:
        @functools.cache
        def squad() -> dict[str, float]:
            return compute("squad", predictions=list(predictions), references=[e.reference for e in examples])

        return {"f1": lambda: squad()["f1"], "exact_match": lambda: squad()["exact_match"]}

    def per_example(self, predictions: Sequence[str], examples: Sequence[Example]) -> dict[str, list[float]]:
        references = [e.reference for e in examples]
        return {
            "f1": per_example("squad_f1", predictions, references),
            "exact_match": per_example("squad_exact_match", predictions, references),
        }


def _squad_answers(answers: Any) -> Any:
    """SQuAD answers as a list of texts; anything else is passed on for `make_example` to report."""
    if isinstance(answers, Mapping) and isinstance(answers.get("text"), list):
        return answers["text"]
    if isinstance(answers, list):
        return [a["text"] if isinstance(a, Mapping) and "text" in a else a for a in answers]
    return answers

"""Chat (customer service): multi-turn conversations rendered with the tokenizer's chat template.

Loss falls on every assistant turn (its reply and end-of-turn token), and only there; the spans come
from the template itself (`ftkit.data.encoding.assistant_spans`, which also folds a system turn into the
first user turn for templates without a system role, and trains only the final turn where a template
rewrites earlier ones). Prediction generates the final assistant turn from the
conversation before it; metrics are ROUGE-L and chrF against the reference reply and the
perplexity of the reference reply.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field

from ftkit.data.encoding import IGNORE_INDEX, Encoded, assistant_spans
from ftkit.errors import RowError
from ftkit.evaluation.metrics import compute, per_example, sum_statistic
from ftkit.tasks.base import Example, Progress, Row, Task, TaskOptions, alpaca_prompt, by_length, register

ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "bot": "assistant",
    "system": "system",
}
Turn = dict[str, str]


class ChatOptions(TaskOptions):
    name: Literal["chat"]
    system_prompt: str | None = Field(default=None, description="added to conversations that have no system turn")
    max_new_tokens: int = Field(default=64, ge=1, le=2048, description="longest reply generated at evaluation")


@dataclass(frozen=True)
class ChatExample(Example):
    """A conversation: every turn, the last one the assistant's reply that evaluation generates."""

    messages: tuple[Turn, ...] = ()


@register
class Chat(Task):
    name = "chat"
    Options = ChatOptions
    columns = ("messages",)
    metrics = ("rouge_l", "chrf", "perplexity")
    lower_is_better = frozenset({"perplexity"})
    options: ChatOptions

    def convert_row(self, row: Row) -> Row:
        """ShareGPT `conversations` (from/value), alpaca (instruction/input/output) and plain
        user/assistant columns become `messages`."""
        if "messages" in row:
            return row
        if isinstance(row.get("conversations"), list):
            turns = [t for t in row["conversations"] if isinstance(t, dict)]
            return row | {
                "messages": [
                    {"role": SHAREGPT_ROLES.get(str(t.get("from")), str(t.get("from"))), "content": t.get("value")}
                    for t in turns
                ]
            }
        user, reply = (
            (alpaca_prompt(row), row.get("output")) if "instruction" in row else (row.get("user"), row.get("assistant"))
        )
        if user is None or reply is None:
            return row
        system = [{"role": "system", "content": row["system"]}] if row.get("system") else []
        return row | {"messages": [*system, {"role": "user", "content": user}, {"role": "assistant", "content": reply}]}

    def make_example(self, row: Mapping[str, Any], where: str) -> ChatExample:
        messages = row.get("messages")
        if not isinstance(messages, list) or not messages:
            raise RowError(f"{where}: 'messages' must be a non-empty list of {{role, content}} turns")
        turns = []
        for n, turn in enumerate(messages, start=1):
            if (
                not isinstance(turn, Mapping)
                or turn.get("role") not in ROLES
                or not isinstance(turn.get("content"), str)
            ):
                raise RowError(
                    f"{where}: turn {n} must be {{role: system|user|assistant, content: text}}, got {turn!r:.80}"
                )
            if not turn["content"].strip():
                raise RowError(f"{where}: turn {n} ({turn['role']}) has empty content")
            turns.append({"role": turn["role"], "content": turn["content"]})
        if turns[-1]["role"] != "assistant" or not any(t["role"] == "user" for t in turns):
            raise RowError(f"{where}: a conversation needs a user turn and must end with an assistant turn")
        if self.options.system_prompt and turns[0]["role"] != "system":
            turns.insert(0, {"role": "system", "content": self.options.system_prompt})
        return ChatExample(
            prompt="",  # the context is rendered by the chat template
            completion=turns[-1]["content"],
            reference=turns[-1]["content"],
            where=where,
            content=" ".join(t["content"] for t in turns if t["role"] == "user"),
            messages=tuple(turns),
        )

    def encode(self, example: Example, tokenizer: Any) -> Encoded:
        """Labels on every assistant span; an over-long conversation loses its oldest tokens."""
        rendered = assistant_spans(tokenizer, _messages(example))
        ids, labels = rendered.ids, [IGNORE_INDEX] * len(rendered.ids)
        for start, end in rendered.spans:
            labels[start:end] = ids[start:end]
        cut = max(0, len(ids) - self.max_length)
        return Encoded(input_ids=ids[cut:], labels=labels[cut:], prompt_truncated=cut > 0, notes=rendered.notes)

    eval_cut = "the oldest turns of the conversation"

    def eval_prompt_ids(self, example: Example, tokenizer: Any) -> list[int]:
        """The conversation up to its last reply, as the chat template renders it."""
        rendered = assistant_spans(tokenizer, _messages(example))
        return rendered.ids[: rendered.spans[-1][0]]

    def predict(
        self, model: Any, tokenizer: Any, examples: Sequence[Example], batch_size: int, progress: Progress
    ) -> list[dict[str, Any]]:
        """Generate each final reply, and score the reference reply's likelihood for perplexity."""
        from ftkit.evaluation.inference import generate_greedy, score_completions

        budget = self.eval_budget(tokenizer)
        contexts, references = [], []
        for example in examples:
            rendered = assistant_spans(tokenizer, _messages(example))
            ids, (start, end) = rendered.ids, rendered.spans[-1]
            context, reply_ids = ids[:start][-budget:], ids[start:end]
            contexts.append(context)
            references.append(Encoded(context + reply_ids, [IGNORE_INDEX] * len(context) + reply_ids, False))

        def predict(batch: list[int]) -> list[dict[str, Any]]:
            replies = generate_greedy(model, tokenizer, [contexts[row] for row in batch], self.options.max_new_tokens)
            logprobs = score_completions(model, tokenizer.pad_token_id, [references[row] for row in batch])
            return [
                {"reply": reply, "nll": -logprob, "tokens": references[row].trained_tokens}
                for row, reply, logprob in zip(batch, replies, logprobs, strict=True)
            ]

        return by_length(contexts, batch_size, predict, progress)

    def scorers(
        self, predictions: Sequence[dict[str, Any]], examples: Sequence[Example]
    ) -> dict[str, Callable[[], float]]:
        replies = [p["reply"] for p in predictions]
        references = [[e.reference] for e in examples]
        return {
            "rouge_l": lambda: compute("rouge_l", predictions=replies, references=references)["rouge_l"],
            "chrf": lambda: compute("chrf", predictions=replies, references=references)["chrf"],
            "perplexity": lambda: compute(
                "perplexity", nll=[p["nll"] for p in predictions], num_tokens=[p["tokens"] for p in predictions]
            )["perplexity"],
        }

    def per_example(self, predictions: Sequence[dict[str, Any]], examples: Sequence[Example]) -> dict[str, list[float]]:
        return {"rouge_l": per_example("rouge_l", [p["reply"] for p in predictions], [[e.reference] for e in examples])}

    def sufficient_statistics(
        self, predictions: Sequence[dict[str, Any]], examples: Sequence[Example]
    ) -> dict[str, Any]:
        return {"chrf": sum_statistic("chrf", [p["reply"] for p in predictions], [[e.reference] for e in examples])}

    def size(self, example: Example) -> int:
        return sum(len(turn["content"]) for turn in _messages(example))

    def shown_input(self, example: Example) -> str:
        """The last user turn: what the reply answers."""
        return next(t["content"] for t in reversed(_messages(example)) if t["role"] == "user")

    def recorded_input(self, example: Example) -> list[Turn]:
        return list(_messages(example))

    def shown_prediction(self, prediction: dict[str, Any]) -> str:
        return str(prediction["reply"])


def _messages(example: Example) -> tuple[Turn, ...]:
    if not isinstance(example, ChatExample):
        raise TypeError(f"{example.where}: the chat task needs a ChatExample (made by Chat.make_example)")
    return example.messages

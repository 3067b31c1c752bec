"""Chat (customer service): multi-turn conversations rendered with the tokenizer's chat template.

Loss falls on every assistant turn, and only there. The spans come from the template itself:
the conversation up to turn i is rendered with the generation prompt, then up to the end of
turn i, and the tokens in between are that turn's reply (with its end-of-turn token). No marker
string is searched for, so a marker that tokenises differently in context cannot break masking.

Prediction generates the final assistant turn from the conversation before it; metrics are
ROUGE-L and chrF against the reference reply and the perplexity of the reference reply.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import Field

from ftkit.evaluation.inference import generate_greedy, score_completions
from ftkit.evaluation.metrics import compute, per_example
from ftkit.data.encoding import IGNORE_INDEX, Encoded
from ftkit.errors import RowError
from ftkit.tasks.base import Example, Progress, Task, TaskOptions, batches, register

ROLES = ("system", "user", "assistant")


class ChatOptions(TaskOptions):
    name: Literal["chat"]
    system_prompt: str | None = Field(default=None, description="added to conversations that have no system turn")
    max_new_tokens: int = Field(default=64, ge=1, le=2048, description="longest reply generated at evaluation")


def render_ids(tokenizer: Any, messages: Sequence[Mapping[str, str]], *, generation_prompt: bool) -> list[int]:
    ids = tokenizer.apply_chat_template(list(messages), tokenize=True, add_generation_prompt=generation_prompt)
    return list(ids["input_ids"] if isinstance(ids, Mapping) else ids)


def assistant_spans(tokenizer: Any, messages: Sequence[Mapping[str, str]]) -> tuple[list[int], list[tuple[int, int]]]:
    """The rendered conversation and the [start, end) token span of every assistant turn."""
    ids = render_ids(tokenizer, messages, generation_prompt=False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = len(render_ids(tokenizer, messages[:i], generation_prompt=True))
        upto = render_ids(tokenizer, messages[: i + 1], generation_prompt=False)
        if ids[: len(upto)] != upto or len(upto) <= start:
            raise RowError(
                "the tokenizer's chat template does not render a conversation as a sequence of its turns, "
                "so assistant turns cannot be located by token; use a model with a standard chat template"
            )
        spans.append((start, len(upto)))
    return ids, spans


@register
class Chat(Task):
    name = "chat"
    Options = ChatOptions
    columns = ("messages",)
    metrics = ("rouge_l", "chrf", "perplexity")
    lower_is_better = frozenset({"perplexity"})
    options: ChatOptions

    def make_example(self, row: Mapping[str, Any], where: str) -> Example:
        messages = row.get("messages")
        if not isinstance(messages, list) or not messages:
            raise RowError(f"{where}: 'messages' must be a non-empty list of {{role, content}} turns")
        turns = []
        for n, turn in enumerate(messages, start=1):
            if not isinstance(turn, Mapping) or turn.get("role") not in ROLES or not isinstance(turn.get("content"), str):
                raise RowError(f"{where}: turn {n} must be {{role: system|user|assistant, content: text}}, got {turn!r:.80}")
            if not turn["content"].strip():
                raise RowError(f"{where}: turn {n} ({turn['role']}) has empty content")
            turns.append({"role": turn["role"], "content": turn["content"]})
        if turns[-1]["role"] != "assistant" or not any(t["role"] == "user" for t in turns):
            raise RowError(f"{where}: a conversation needs a user turn and must end with an assistant turn")
        if self.options.system_prompt and turns[0]["role"] != "system":
            turns.insert(0, {"role": "system", "content": self.options.system_prompt})
        return Example(
            prompt="",  # the context is rendered by the chat template
            completion=turns[-1]["content"],
            reference=turns[-1]["content"],
            where=where,
            messages=tuple(turns),
            content=" ".join(t["content"] for t in turns if t["role"] == "user"),
        )

    def encode(self, example: Example, tokenizer: Any) -> Encoded:
        """Labels on every assistant span; an over-long conversation loses its oldest tokens."""
        ids, spans = assistant_spans(tokenizer, example.messages or ())
        labels = [IGNORE_INDEX] * len(ids)
        for start, end in spans:
            labels[start:end] = ids[start:end]
        cut = max(0, len(ids) - self.max_length)
        return Encoded(input_ids=ids[cut:], labels=labels[cut:], prompt_truncated=cut > 0)

    def predict(
        self, model: Any, tokenizer: Any, examples: Sequence[Example], batch_size: int, progress: Progress
    ) -> list[dict[str, Any]]:
        """Generate each final reply, and score the reference reply's likelihood for perplexity."""
        budget = self.max_length - self.options.max_new_tokens
        predictions: list[dict[str, Any]] = []
        for batch in batches(examples, batch_size):
            contexts, references = [], []
            for example in batch:
                ids, spans = assistant_spans(tokenizer, example.messages or ())
                start, end = spans[-1]
                context, reply = ids[:start][-budget:], ids[start:end]
                contexts.append(context)
                references.append(Encoded(context + reply, [IGNORE_INDEX] * len(context) + reply, False))
            replies = generate_greedy(model, tokenizer, contexts, self.options.max_new_tokens)
            logprobs = score_completions(model, tokenizer.pad_token_id, references)
            for reply, logprob, reference in zip(replies, logprobs, references):
                predictions.append({"reply": reply, "nll": -logprob, "tokens": reference.trained_tokens})
            progress(len(batch))
        return predictions

    def score(
        self, predictions: Sequence[dict[str, Any]], examples: Sequence[Example], only: str | None = None
    ) -> dict[str, float]:
        replies = [p["reply"] for p in predictions]
        references = [[e.reference] for e in examples]
        metrics = {
            "rouge_l": lambda: compute("rouge_l", predictions=replies, references=references)["rouge_l"],
            "chrf": lambda: compute("chrf", predictions=replies, references=references)["chrf"],
            "perplexity": lambda: compute(
                "perplexity", nll=[p["nll"] for p in predictions], num_tokens=[p["tokens"] for p in predictions]
            )["perplexity"],
        }
        return {name: value() for name, value in metrics.items() if only in (None, name)}

    def per_example(self, predictions: Sequence[dict[str, Any]], examples: Sequence[Example]) -> dict[str, list[float]]:
        return {"rouge_l": per_example("rouge_l", [p["reply"] for p in predictions], [[e.reference] for e in examples])}

"""How an example becomes token ids and labels: the one place that decides what carries loss.

Prompt/completion pairs and chat-template spans both live here, so the tasks, the inference
primitives, the trainer and serving share one rendering without importing the task registry.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ftkit.errors import RowError

IGNORE_INDEX = -100  # label value that transformers' cross-entropy skips


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]
    prompt_truncated: bool

    @property
    def trained_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)

    @property
    def trained_ids(self) -> list[int]:
        """The token ids that carry loss, in order."""
        return [label for label in self.labels if label != IGNORE_INDEX]


def encode_prompt_completion(tokenizer: Any, prompt: str, completion: str, max_length: int) -> Encoded:
    """Encode with loss on the completion and the EOS that ends it.

    EOS is appended by id, never by text, and carries loss: the pad token is distinct from EOS
    (see `ftkit.models.load_tokenizer`), so the collator's padding mask cannot hide it.
    When the pair is too long, tokens are cut from the middle of the prompt (its head holds the
    instruction, its tail the cue right before the answer); the completion is never cut.
    """
    prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    budget = max_length - len(completion_ids)
    if budget < 1:
        raise RowError(
            f"the completion alone is {len(completion_ids)} tokens, over data.max_length={max_length}; "
            "raise data.max_length"
        )
    truncated = len(prompt_ids) > budget
    prompt_ids = truncate_middle(prompt_ids, budget)
    return Encoded(
        input_ids=prompt_ids + completion_ids,
        labels=[IGNORE_INDEX] * len(prompt_ids) + completion_ids,
        prompt_truncated=truncated,
    )


def truncate_middle(ids: list[int], budget: int) -> list[int]:
    """Keep the head (the instruction) and the tail (the cue before the answer) of a long prompt."""
    if len(ids) <= budget:
        return ids
    head = budget // 2
    return ids[:head] + ids[len(ids) - (budget - head) :]


def last_span_start(labels: list[int]) -> int:
    """Where the last run of loss-carrying labels begins (the final answer of an example).

    A prompt/completion example has one such run, its completion; a multi-turn conversation has one
    per assistant turn, and a probe or a server asks for the last one.
    """
    end = max((i for i, label in enumerate(labels) if label != IGNORE_INDEX), default=-1)
    start = end
    while start > 0 and labels[start - 1] != IGNORE_INDEX:
        start -= 1
    return max(start, 0) if end >= 0 else len(labels)


def render_ids(tokenizer: Any, messages: Sequence[Mapping[str, str]], *, generation_prompt: bool) -> list[int]:
    """A conversation rendered by the tokenizer's own chat template, as token ids."""
    ids = tokenizer.apply_chat_template(list(messages), tokenize=True, add_generation_prompt=generation_prompt)
    return list(ids["input_ids"] if isinstance(ids, Mapping) else ids)


def assistant_spans(tokenizer: Any, messages: Sequence[Mapping[str, str]]) -> tuple[list[int], list[tuple[int, int]]]:
    """The rendered conversation and the [start, end) token span of every assistant turn.

    The spans come from the template itself: the conversation up to turn i is rendered with the
    generation prompt, then up to the end of turn i, and the tokens in between are that turn's
    reply (with its end-of-turn token). No marker string is searched for, so a marker that
    tokenises differently in context cannot break masking.
    """
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

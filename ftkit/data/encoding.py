"""How an example becomes token ids and labels: the one place that decides what carries loss.

Kept outside `ftkit.tasks` so that the inference primitives, the data layer and the trainer can
use it without importing the task registry.
"""

from __future__ import annotations

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

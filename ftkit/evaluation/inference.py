"""Batched, streamed inference primitives that tasks build their `predict` on.

Nothing here keeps logits beyond one batch: the Trainer's evaluation loop accumulates
`[examples x sequence x vocab]` logits and is the reason evaluation runs out of memory where
training fit. Here memory depends on the batch size, not on the size of the evaluation set.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ftkit.data.encoding import IGNORE_INDEX, Encoded, stop_ids


def input_device(model: Any) -> torch.device:
    """Where a model's inputs go: its input embeddings' device. With a device map, or a quantized base
    placed on a GPU beside CPU-side extras, the first parameter found is not necessarily there."""
    return torch.device(model.get_input_embeddings().weight.device)


def left_pad(rows: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Left-pad token rows so that they all end at the same position.

    Position ids are counted from each row's first real token; without them rotary models
    would see the padding as context and score a left-padded row differently from an unpadded one.
    """
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, width - len(row) :] = 1
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return {
        "input_ids": input_ids.to(device),
        "attention_mask": attention_mask.to(device),
        "position_ids": position_ids.to(device),
    }


@torch.inference_mode()
def score_completions(model: Any, pad_id: int, encoded: Sequence[Encoded]) -> list[float]:
    """Sum of log-probabilities of each sequence's labelled tokens, in one forward pass.

    Labelled tokens must form the tail of each sequence (prompt, then completion). Left padding
    aligns those tails, so the LM head is applied only to the last few positions
    (`logits_to_keep`) instead of the whole sequence: the vocabulary projection of a 100-token
    prompt is skipped entirely.
    """
    device = input_device(model)
    batch = left_pad([e.input_ids for e in encoded], pad_id, device)
    labels = torch.full_like(batch["input_ids"], IGNORE_INDEX)
    for i, e in enumerate(encoded):
        labels[i, labels.shape[1] - len(e.labels) :] = torch.tensor(e.labels, device=device)
    tail = max(e.trained_tokens for e in encoded)
    logits = model(**batch, logits_to_keep=tail + 1, use_cache=False).logits[:, :-1].float()
    targets = labels[:, -tail:]
    logprobs = torch.log_softmax(logits, dim=-1)
    picked = logprobs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * (targets != IGNORE_INDEX)).sum(-1).tolist()


@torch.inference_mode()
def generate_greedy(model: Any, tokenizer: Any, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> list[str]:
    """Greedy continuation of a batch of tokenised prompts, stopping at EOS or the chat template's end of
    turn; returns the new text.

    Left padding with an attention mask and the KV cache of `generate`: one batched decode, and
    the continuation of a prompt does not depend on what else is in its batch.
    """
    device = input_device(model)
    batch = left_pad(prompts, tokenizer.pad_token_id, device)
    batch.pop("position_ids")  # generate derives them from the attention mask
    output = model.generate(
        **batch,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        eos_token_id=stop_ids(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
    )
    new_tokens = output[:, batch["input_ids"].shape[1] :]
    return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in new_tokens]


@torch.inference_mode()
def score_options(
    model: Any, pad_id: int, prompts: Sequence[Sequence[int]], options: Sequence[Sequence[int]]
) -> list[list[float]]:
    """Log-likelihood of every option after every prompt, with each prompt run once.

    The prompts (left-padded) go through the model once; their KV cache is repeated for each
    option and only the few option tokens are run on top. Scoring K labels costs one prompt pass
    instead of K, and the LM head sees only the last prompt position and the option tokens.
    Returns scores[prompt][option]. Options must be non-empty (label tokens, usually ending in EOS).
    """
    device = input_device(model)
    k, batch = len(options), left_pad(prompts, pad_id, device)
    first = model(**batch, use_cache=True, logits_to_keep=1)
    first_logprobs = torch.log_softmax(first.logits[:, -1].float(), dim=-1)  # predicts each option's first token
    cache = first.past_key_values
    cache.batch_repeat_interleave(k)

    width = max(len(option) for option in options)
    option_ids = torch.full((k, width), pad_id, dtype=torch.long, device=device)
    option_mask = torch.zeros((k, width), dtype=torch.long, device=device)
    for i, option in enumerate(options):
        option_ids[i, : len(option)] = torch.tensor(option, device=device)
        option_mask[i, : len(option)] = 1
    rows = len(prompts)
    start = batch["attention_mask"].sum(-1).repeat_interleave(k).unsqueeze(-1)  # next position of each prompt
    second = model(
        input_ids=option_ids.repeat(rows, 1),
        attention_mask=torch.cat([batch["attention_mask"].repeat_interleave(k, 0), option_mask.repeat(rows, 1)], dim=1),
        position_ids=start + torch.arange(width, device=device),
        past_key_values=cache,
        use_cache=False,
    )
    logprobs = torch.log_softmax(second.logits[:, :-1].float(), dim=-1)  # position j predicts option token j + 1
    targets = option_ids[:, 1:].repeat(rows, 1)
    picked = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1) * option_mask[:, 1:].repeat(rows, 1)
    firsts = first_logprobs[:, option_ids[:, 0]]  # [rows, k]
    return (firsts + picked.sum(-1).view(rows, k)).tolist()

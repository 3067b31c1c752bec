"""Batched, streamed inference primitives that tasks build their `predict` on.

Nothing here keeps logits beyond one batch: the Trainer's evaluation loop accumulates
`[examples x sequence x vocab]` logits and is the reason evaluation runs out of memory where
training fit. Here memory depends on the batch size, not on the size of the evaluation set.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ftkit.data.encoding import IGNORE_INDEX, Encoded, stop_ids


def input_device(model: Any) -> torch.device:
    """Where a model's inputs go: its input embeddings' device. With a device map, or a quantized base
    placed on a GPU beside CPU-side extras, the first parameter found is not necessarily there."""
    return torch.device(model.get_input_embeddings().weight.device)


@contextlib.contextmanager
def frozen_in_compute_dtype(model: Any) -> Iterator[None]:
    """Run a 4-bit model's frozen float32 weights in its compute dtype (bfloat16), then put them back.

    peft's `prepare_model_for_kbit_training` up-casts every weight that is not 4-bit (embeddings, the LM
    head, norms) to float32 for training, so every activation after it is float32 as well: the trained
    model then evaluates about 3x slower than the same base and adapter loaded by `ftkit eval`. Only
    weights whose values the compute dtype holds exactly are cast (those that were up-cast), LoRA
    weights never, so the numbers are `ftkit eval`'s and the round trip loses nothing.
    """
    modules = model.modules() if isinstance(model, torch.nn.Module) else ()  # llama.cpp's model has none
    dtype = next((m.compute_dtype for m in modules if isinstance(getattr(m, "compute_dtype", None), torch.dtype)), None)
    cast = []
    if dtype is not None and dtype != torch.float32:
        for name, param in model.named_parameters():
            if param.dtype == torch.float32 and not param.requires_grad and ".lora_" not in name:
                narrow = param.data.to(dtype)
                if torch.equal(narrow.float(), param.data):
                    param.data = narrow
                    cast.append(param)
    try:
        yield
    finally:
        for param in cast:
            param.data = param.data.float()


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


# What one scoring pass may hold at once, in bytes: its logits, attention scores and mask. Rows beyond it
# wait for the next pass, so 150 labels at `eval.batch_size: 16` fit where a fixed batch would not.
SCORE_MEMORY_BUDGET = 1 << 29


@dataclass(frozen=True)
class OptionTrie:
    """The options as one token tree: options that share their first tokens share those nodes.

    `tokens[i]` is the token fed at node i and `parents[i]` its parent node (-1: the prompt's last
    token), `depths[i]` its distance from the prompt. Each option is a path; `picks` lists, for every
    token of every option, (the node whose next-token distribution predicts it, the token, the option);
    node -1 is the prompt's last position. The last token of an option (EOS) is predicted but never fed.
    """

    tokens: list[int]
    parents: list[int]
    depths: list[int]
    picks: list[tuple[int, int, int]]

    @classmethod
    def build(cls, options: Sequence[Sequence[int]]) -> OptionTrie:
        if not options or not all(options):
            raise ValueError("options must be non-empty token lists")
        nodes: dict[tuple[int, ...], int] = {}
        tokens: list[int] = []
        parents: list[int] = []
        depths: list[int] = []
        picks: list[tuple[int, int, int]] = []
        for k, option in enumerate(options):
            parent = -1
            for j, token in enumerate(option):
                picks.append((parent, token, k))
                if j == len(option) - 1:
                    break
                prefix = tuple(option[: j + 1])
                if prefix not in nodes:
                    nodes[prefix] = len(tokens)
                    tokens.append(token)
                    parents.append(parent)
                    depths.append(j + 1)
                parent = nodes[prefix]
        return cls(tokens, parents, depths, picks)

    def ancestry(self) -> torch.Tensor:
        """[nodes, nodes] bool: node i may attend to node a (a is i or one of its ancestors)."""
        n = len(self.tokens)
        sees = torch.eye(n, dtype=torch.bool)
        for i, parent in enumerate(self.parents):  # parents come before their children
            if parent >= 0:
                sees[i] |= sees[parent]
        return sees


def _tree_mask(attention_mask: torch.Tensor, sees: torch.Tensor, model: Any) -> torch.Tensor:
    """The 4-D mask of [prompt, trie] rows: the prompt causal over its real tokens, every trie node over
    the whole real prompt and its own ancestors. Boolean for SDPA, additive (0 / dtype min) for eager."""
    rows, width = attention_mask.shape
    n = sees.shape[0]
    real = attention_mask.bool()
    causal = torch.ones(width, width, dtype=torch.bool, device=real.device).tril()
    top = (causal & real[:, None, :]) | torch.eye(width, dtype=torch.bool, device=real.device)  # a pad sees itself
    top = torch.cat([top, torch.zeros(rows, width, n, dtype=torch.bool, device=real.device)], dim=2)
    bottom = torch.cat([real[:, None, :].expand(rows, n, width), sees.to(real.device).expand(rows, n, n)], dim=2)
    return attention_mask_for(torch.cat([top, bottom], dim=1)[:, None], model)


def attention_mask_for(allowed: torch.Tensor, model: Any) -> torch.Tensor:
    """A 4-D `[rows, 1, queries, keys]` mask of what may attend to what, as the model's attention takes it:
    boolean for SDPA, additive (0 / dtype min) for eager. transformers passes a 4-D mask through as it is."""
    if model.config._attn_implementation == "sdpa":
        return allowed
    dtype = model.get_input_embeddings().weight.dtype
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)


def rows_per_pass(model: Any, length: int, kept: int, budget: int) -> int:
    """How many rows of `length` tokens, `kept` of them through the LM head, one pass can take within `budget`
    bytes: kept logits (model dtype, plus a float32 chunk), attention scores of one layer and the mask, per row."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    heads = getattr(config, "num_attention_heads", 16)
    per_row = kept * model.get_output_embeddings().weight.shape[0] * 6 + (heads + 1) * length * length * 4
    return max(1, budget // per_row)


@torch.inference_mode()
def score_options(
    model: Any,
    pad_id: int,
    prompts: Sequence[Sequence[int]],
    options: Sequence[Sequence[int]],
    budget: int = SCORE_MEMORY_BUDGET,
) -> list[list[float]]:
    """Log-likelihood of every option after every prompt: scores[prompt][option].

    The options become a token trie (`OptionTrie`): shared prefixes are one node, so 77 intents
    that start alike cost their distinct tokens, not 77 x their length. Each prompt and its trie run
    as one sequence, the trie nodes under a tree mask (each sees the prompt and its own ancestors), so
    nothing is repeated per option; the LM head runs only at the prompt's last position and the
    trie nodes, and the log-normaliser is taken one row at a time in float32. Rows per pass are
    bounded by `budget` bytes. Options must be non-empty (label tokens, usually ending in EOS).

    A model that cannot take a tree mask but scores options itself (llama.cpp's, `export/gguf/llamacpp.py`)
    answers through its own `score_options(prompts, options)`, with the same meaning.
    """
    if hasattr(model, "score_options"):
        return model.score_options(prompts, options)
    trie = OptionTrie.build(options)
    device = input_device(model)
    nodes = torch.tensor(trie.picks, dtype=torch.long, device=device)  # (node, token, option) per scored token
    sees = trie.ancestry()
    scores: list[list[float]] = []
    width = max(len(prompt) for prompt in prompts)
    step = rows_per_pass(model, width + len(trie.tokens), len(trie.tokens) + 1, budget)
    for start in range(0, len(prompts), step):
        rows = prompts[start : start + step]
        batch = left_pad(rows, pad_id, device)
        width = batch["input_ids"].shape[1]
        n = len(rows)
        fed = torch.tensor(trie.tokens, dtype=torch.long, device=device).expand(n, -1)
        depth = torch.tensor(trie.depths, dtype=torch.long, device=device)
        lengths = batch["attention_mask"].sum(-1, keepdim=True)
        keep = torch.arange(width - 1, width + len(trie.tokens), device=device)
        logits = model(
            input_ids=torch.cat([batch["input_ids"], fed], dim=1),
            attention_mask=_tree_mask(batch["attention_mask"], sees, model),
            position_ids=torch.cat([batch["position_ids"], lengths + depth - 1], dim=1),
            logits_to_keep=keep,
            use_cache=False,
        ).logits  # [rows, 1 + nodes, vocab]; kept row 0 is the prompt's last position, row i + 1 node i
        for row in logits:
            normaliser = torch.logsumexp(row.float(), dim=-1)
            picked = row[nodes[:, 0] + 1, nodes[:, 1]].float() - normaliser[nodes[:, 0] + 1]
            total = torch.zeros(len(options), dtype=torch.float32, device=device).index_add_(0, nodes[:, 2], picked)
            scores.append(total.tolist())
    return scores

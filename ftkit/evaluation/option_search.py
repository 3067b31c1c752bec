"""The likeliest option after each prompt without scoring every option: a best-first search of the option trie.

Scoring all 77 banking intents feeds every node of their trie (~370 tokens) after each ~30-token query, so a
many-label example costs about 8x a two-label one, nearly all of it spent on options that had lost by their first
token. An option's score is a sum of log-probabilities, each at most 0, so a prefix's score bounds the score of
every option below it. The search expands trie nodes best prefix first, `width` per row and pass, over one KV
cache per row that holds the prompt and the nodes fed so far (each new node attends to the real prompt and its
own ancestors' columns). A row is done when no node left to expand scores at least as well as its best complete
option: what it picks is the argmax of scoring every option (`inference.score_options`), ties going to the lower
index as `max` over those scores gives them, and a node is fed at most once per row, so a pass never holds more
than the one-pass scorer would: it takes more rows at once within the same memory budget.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ftkit.evaluation.inference import (
    SCORE_MEMORY_BUDGET,
    OptionTrie,
    attention_mask_for,
    input_device,
    left_pad,
    rows_per_pass,
    score_options,
)

# Trie nodes each row feeds per pass: one pass costs the model's per-forward overhead once for all rows, so
# fewer, wider passes win until the nodes fed are mostly ones a narrower search would have pruned (banking77's
# 77 intents on the default model: 16 -> 14 passes, 32 -> 8 and the fewest seconds, 64 -> 8 with more nodes fed).
WIDTH = 32
# Up to this many options, one pass that scores them all is cheaper than a search's two or more.
ONE_PASS_OPTIONS = 8


@dataclass(frozen=True)
class _Targets:
    """What the next-token distribution at each node scores (node -1: the prompt's last position): the
    children it leads to, `(token, child node)`, the options it completes, `(token, option)`, and the tokens
    of both in that order (what a pass gathers at the node)."""

    children: dict[int, list[tuple[int, int]]]
    endings: dict[int, list[tuple[int, int]]]
    tokens: dict[int, list[int]]

    @classmethod
    def of(cls, trie: OptionTrie) -> _Targets:
        children: dict[int, list[tuple[int, int]]] = {}
        for node, (token, parent) in enumerate(zip(trie.tokens, trie.parents, strict=True)):
            children.setdefault(parent, []).append((token, node))
        last: dict[int, tuple[int, int]] = {}
        for node, token, option in trie.picks:  # an option's picks come in order: its last one is its ending
            last[option] = (node, token)
        endings: dict[int, list[tuple[int, int]]] = {}
        for option, (node, token) in last.items():
            endings.setdefault(node, []).append((token, option))
        tokens = {
            node: [t for t, _ in children.get(node, [])] + [t for t, _ in endings.get(node, [])]
            for node in {*children, *endings}
        }
        return cls(children, endings, tokens)


@dataclass
class _Row:
    """One prompt's search: prefix scores of the nodes it may expand next, its best complete option so far,
    and the cache column of every node it has fed."""

    frontier: dict[int, float] = field(default_factory=dict)
    scores: dict[int, float] = field(default_factory=lambda: {-1: 0.0})
    column: dict[int, int] = field(default_factory=dict)
    best: float = -math.inf
    choice: int = -1

    def learn(self, node: int, targets: _Targets, logprobs: Sequence[float]) -> None:
        """Take the log-probabilities the distribution at `node` gives its children and endings, in the
        order of `targets.tokens[node]`."""
        base, values = self.scores[node], iter(logprobs)
        for (_, child), value in zip(targets.children.get(node, []), values, strict=False):
            self.frontier[child] = self.scores[child] = base + value
        for (_, option), value in zip(targets.endings.get(node, []), values, strict=False):
            score = base + value
            if score > self.best or (score == self.best and option < self.choice):
                self.best, self.choice = score, option

    def next_nodes(self, width: int) -> list[int]:
        """The best `width` nodes that could still beat the best complete option (which ones tie it, too:
        a tie goes to the lower option index), taken off the frontier; the rest that cannot are dropped."""
        hopeful = sorted((n for n, s in self.frontier.items() if s >= self.best), key=lambda n: -self.frontier[n])
        self.frontier = {n: self.frontier[n] for n in hopeful[width:]}
        return hopeful[:width]


@torch.inference_mode()
def best_options(
    model: Any,
    pad_id: int,
    prompts: Sequence[Sequence[int]],
    options: Sequence[Sequence[int]],
    budget: int = SCORE_MEMORY_BUDGET,
    width: int = WIDTH,
) -> list[int]:
    """Index of the likeliest option after every prompt: `argmax(score_options(...)[i])`, found by searching
    the option trie rather than scoring all of it. With few options (two sentiment labels), or a model that
    scores options itself (llama.cpp's), every option is scored in one pass instead."""
    if len(options) <= ONE_PASS_OPTIONS or hasattr(model, "score_options"):
        scores = score_options(model, pad_id, prompts, options, budget)
        return [max(range(len(options)), key=row.__getitem__) for row in scores]
    trie = OptionTrie.build(options)
    targets = _Targets.of(trie)
    # a pass keeps at most `width` nodes' logits, and a row's cache never holds more than the whole trie
    length = max(len(prompt) for prompt in prompts) + len(trie.tokens)
    step = rows_per_pass(model, length, min(width, len(trie.tokens)), budget)
    picked: list[int] = []
    for start in range(0, len(prompts), step):
        picked += _search(model, pad_id, prompts[start : start + step], trie, targets, width)
    return picked


def _search(
    model: Any, pad_id: int, prompts: Sequence[Sequence[int]], trie: OptionTrie, targets: _Targets, width: int
) -> list[int]:
    from transformers import DynamicCache

    device = input_device(model)
    batch = left_pad(prompts, pad_id, device)
    out = model(**batch, past_key_values=DynamicCache(), use_cache=True, logits_to_keep=1)
    rows = [_Row() for _ in prompts]
    _learn(rows, [[-1]] * len(rows), out.logits[:, -1:], targets)
    cache, real, lengths = out.past_key_values, batch["attention_mask"].bool(), batch["attention_mask"].sum(-1)
    live = list(range(len(rows)))
    while True:
        chosen = [rows[r].next_nodes(width) for r in live]
        kept = [i for i, nodes in enumerate(chosen) if nodes]
        if not kept:
            break
        if len(kept) < len(live):  # rows that are done leave the cache
            index = torch.tensor(kept, device=device)
            cache.batch_select_indices(index)
            real, lengths = real[index], lengths[index]
            live, chosen = [live[i] for i in kept], [chosen[i] for i in kept]
        logits = _feed(model, pad_id, cache, real, lengths, [rows[r] for r in live], chosen, trie)
        _learn([rows[r] for r in live], chosen, logits, targets)
    return [row.choice for row in rows]


def _feed(
    model: Any,
    pad_id: int,
    cache: Any,
    real: torch.Tensor,
    lengths: torch.Tensor,
    rows: Sequence[_Row],
    chosen: Sequence[Sequence[int]],
    trie: OptionTrie,
) -> torch.Tensor:
    """Run each row's chosen nodes through the model after everything in its cache; returns their logits,
    `[rows, width, vocab]`. A row with fewer nodes is padded with tokens that attend only to themselves."""
    device = real.device
    fed = max(len(nodes) for nodes in chosen)
    columns = cache.get_seq_length()
    tokens = torch.full((len(rows), fed), pad_id, dtype=torch.long)
    depth = torch.zeros((len(rows), fed), dtype=torch.long)
    allowed = torch.zeros((len(rows), fed, columns + fed), dtype=torch.bool)
    allowed[:, :, : real.shape[1]] = real[:, None, :].cpu()
    allowed[:, range(fed), range(columns, columns + fed)] = True
    for r, (row, nodes) in enumerate(zip(rows, chosen, strict=True)):
        for k, node in enumerate(nodes):
            tokens[r, k], depth[r, k] = trie.tokens[node], trie.depths[node]
            row.column[node] = columns + k
            parent = trie.parents[node]
            while parent >= 0:
                allowed[r, k, row.column[parent]] = True
                parent = trie.parents[parent]
    positions = torch.where(depth > 0, lengths.cpu()[:, None] + depth - 1, 0)
    return model(
        input_ids=tokens.to(device),
        attention_mask=attention_mask_for(allowed.to(device)[:, None], model),
        position_ids=positions.to(device),
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=fed,
    ).logits


def _learn(rows: Sequence[_Row], nodes: Sequence[Sequence[int]], logits: torch.Tensor, targets: _Targets) -> None:
    """Hand each row the log-probabilities of what its fed nodes' distributions score: one gather and one
    copy off the device for all of them."""
    where = [
        (r, k, token)
        for r, row_nodes in enumerate(nodes)
        for k, n in enumerate(row_nodes)
        for token in targets.tokens[n]
    ]
    index = torch.tensor(where, dtype=torch.long, device=logits.device)
    normaliser = torch.logsumexp(logits.float(), dim=-1)
    values = (logits[index[:, 0], index[:, 1], index[:, 2]].float() - normaliser[index[:, 0], index[:, 1]]).tolist()
    at = 0
    for row, row_nodes in zip(rows, nodes, strict=True):
        for node in row_nodes:
            count = len(targets.tokens[node])
            row.learn(node, targets, values[at : at + count])
            at += count

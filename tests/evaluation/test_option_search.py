"""The trie search picks exactly the option that scoring every option picks, feeding no node twice."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from ftkit.evaluation import option_search
from ftkit.evaluation.inference import OptionTrie, score_options
from ftkit.evaluation.option_search import best_options
from ftkit.tasks import get_task
from ftkit.tasks.sentiment import SentimentOptions
from tests.evaluation.test_inference import INTENTS
from tests.evaluation.test_inference import _intent_options as _options

QUERIES = [
    "Query: my card has not arrived yet\nIntent:",
    "Query: how do I link my card to the app? it keeps failing and I have tried three times now\nIntent:",
    "Query: pin\nIntent:",
    "Query: the exchange rate you gave me was wrong\nIntent:",
    "Query: why do you need to verify who I am\nIntent:",
]


def _argmax(scores: list[float]) -> int:
    return max(range(len(scores)), key=scores.__getitem__)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("width", [1, 3, 32])
def test_search_picks_what_scoring_every_option_picks(tiny_model_dir, tokenizer, attention, width) -> None:
    """Narrow widths make many passes over a growing cache, rows leave it as they finish: each row still gets
    the argmax of the one-pass scores of all 12 options."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation=attention)
    model.eval()
    prompts = [tokenizer(q)["input_ids"] for q in QUERIES]
    options = _options(tokenizer)
    expected = [_argmax(row) for row in score_options(model, tokenizer.pad_token_id, prompts, options)]
    assert best_options(model, tokenizer.pad_token_id, prompts, options, width=width) == expected
    assert best_options(model, tokenizer.pad_token_id, prompts, options, width=width, budget=1) == expected


def test_search_on_a_4bit_model_and_through_the_task(tiny_model_dir, tokenizer) -> None:
    from ftkit.models import load_model
    from ftkit.recipe import ModelConfig

    model = load_model(ModelConfig(source=str(tiny_model_dir), quantization="4bit", compute_dtype="float32")).model
    model.eval()
    task = get_task(SentimentOptions(name="sentiment", labels=INTENTS, prompt_template="Query: {text}\nIntent:"), 96)
    examples = [
        task.make_example({"text": q.split(": ", 1)[1], "label": INTENTS[0]}, f"q:{i}") for i, q in enumerate(QUERIES)
    ]
    prompts = [task.eval_prompt_ids(e, tokenizer) for e in examples]
    scores = score_options(model, tokenizer.pad_token_id, prompts, _options(tokenizer))
    predicted = task.predict(model, tokenizer, examples, batch_size=2, progress=lambda n: None)
    assert predicted == [INTENTS[_argmax(row)] for row in scores]


def test_a_row_prunes_what_cannot_beat_its_best_and_breaks_ties_by_index() -> None:
    """The search's exactness rule on a hand-made trie: a node whose prefix already scores below the best
    complete option is dropped unfed; one that ties it is still expanded, and a tie goes to the lower index."""
    from ftkit.evaluation.option_search import _Row, _Targets

    # option 0 = (6, 7, EOS), option 1 = (5, EOS), option 2 = (9, 9, EOS); nodes: 0 (6), 1 (6 7), 2 (5), 3 (9), 4 (9 9)
    trie = OptionTrie.build([[6, 7, 2], [5, 2], [9, 9, 2]])
    targets = _Targets.of(trie)
    assert targets.tokens[-1] == [6, 5, 9]
    row = _Row()
    row.learn(-1, targets, [-1.0, -0.5, -2.5])  # log p(6), log p(5), log p(9) after the prompt
    assert row.next_nodes(1) == [2]  # (5) first: the best prefix
    row.learn(2, targets, [-1.5])  # option 1 complete: -2.0
    assert (row.best, row.choice) == (-2.0, 1)
    assert row.next_nodes(8) == [0]  # (9) at -2.5 cannot win any more: dropped, never fed
    row.learn(0, targets, [-1.0])  # (6 7) at -2.0: ties the best, so it is still expanded
    assert row.next_nodes(8) == [1] and not row.frontier
    row.learn(1, targets, [0.0])  # option 0 complete at -2.0: the tie goes to the lower index
    assert (row.best, row.choice) == (-2.0, 0)
    assert row.next_nodes(8) == []


def test_no_row_feeds_a_node_twice(tiny_model_dir, tokenizer, monkeypatch) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    fed: dict[int, list[int]] = {}
    real_feed = option_search._feed

    def spy(model, pad_id, cache, real, lengths, rows, chosen, trie):
        for row, nodes in zip(rows, chosen, strict=True):
            fed.setdefault(id(row), []).extend(nodes)
        return real_feed(model, pad_id, cache, real, lengths, rows, chosen, trie)

    monkeypatch.setattr(option_search, "_feed", spy)
    options = _options(tokenizer)
    best_options(model, tokenizer.pad_token_id, [tokenizer(q)["input_ids"] for q in QUERIES], options, width=2)
    assert len(fed) == len(QUERIES)
    assert all(len(nodes) == len(set(nodes)) for nodes in fed.values())
    assert all(len(nodes) <= len(OptionTrie.build(options).tokens) for nodes in fed.values())

"""Batched label scoring equals one-at-a-time scoring, and predicts the likeliest label."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from ftkit.data.encoding import encode_prompt_completion
from ftkit.evaluation.inference import score_completions
from ftkit.tasks import get_task
from ftkit.tasks.sentiment import SentimentOptions


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


def _full_sequence_logprob(model, encoded) -> float:
    """Reference computation: full logits over the whole unpadded sequence."""
    ids = torch.tensor([encoded.input_ids])
    logprobs = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
    targets = torch.tensor(encoded.labels[1:])
    keep = targets != -100
    return float(logprobs[keep].gather(-1, targets[keep].unsqueeze(-1)).sum())


def test_left_padded_batch_scores_equal_single_sequences(tiny, tokenizer) -> None:
    prompts = ["Review: short\nSentiment:", "Review: a much longer review about a toaster that burnt bread\nSentiment:"]
    encoded = [encode_prompt_completion(tokenizer, p, c, 64) for p in prompts for c in (" negative", " very positive")]
    batched = score_completions(tiny, tokenizer.pad_token_id, encoded)
    single = [_full_sequence_logprob(tiny, e) for e in encoded]
    assert batched == pytest.approx(single, abs=1e-4)


def test_predict_picks_the_highest_scoring_label(tiny, tokenizer) -> None:
    task = get_task(SentimentOptions(name="sentiment", labels=["negative", "positive"]), max_length=64)
    examples = [
        task.make_example({"text": t, "label": "positive"}, f"f:row {i}") for i, t in enumerate(["good", "bad", "meh"])
    ]
    seen: list[int] = []
    predictions = task.predict(tiny, tokenizer, examples, batch_size=2, progress=seen.append)
    assert seen == [2, 1]
    for example, prediction in zip(examples, predictions):
        scores = [
            _full_sequence_logprob(tiny, encode_prompt_completion(tokenizer, example.prompt, f" {label}", 64))
            for label in ("negative", "positive")
        ]
        assert prediction == ("negative", "positive")[scores.index(max(scores))]


@pytest.mark.parametrize("quantization", ["none", "4bit"])
def test_shared_prompt_option_scores_equal_full_sequences(tiny_model_dir, tokenizer, quantization) -> None:
    from ftkit.evaluation.inference import score_options
    from ftkit.models import load_model
    from ftkit.recipe import ModelConfig

    model = load_model(
        ModelConfig(source=str(tiny_model_dir), quantization=quantization, compute_dtype="float32")
    ).model.eval()
    prompts = ["Review: short\nSentiment:", "Review: a much longer review about a toaster that burnt bread\nSentiment:"]
    labels = [" negative", " very positive", " ok"]
    options = [tokenizer(c, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for c in labels]
    scores = score_options(model, tokenizer.pad_token_id, [tokenizer(p)["input_ids"] for p in prompts], options)
    for i, prompt in enumerate(prompts):
        expected = [_full_sequence_logprob(model, encode_prompt_completion(tokenizer, prompt, c, 64)) for c in labels]
        assert scores[i] == pytest.approx(expected, abs=2e-4)


INTENTS = [
    "card_arrival",
    "card_linking",
    "card_not_working",
    "exchange_rate",
    "exchange_charge",
    "lost_or_stolen_card",
    "pin_blocked",
    "top_up_failed",
    "top_up_reverted",
    "transfer_timing",
    "balance_not_updated_after_bank_transfer",
    "why_verify_identity",
]


def _intent_options(tokenizer) -> list[list[int]]:
    return [
        tokenizer(f" {label}", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for label in INTENTS
    ]


def test_option_trie_shares_prefixes(tokenizer) -> None:
    from ftkit.evaluation.inference import OptionTrie

    options = _intent_options(tokenizer)
    trie = OptionTrie.build(options)
    prefixes = {tuple(o[: j + 1]) for o in options for j in range(len(o) - 1)}
    assert len(trie.tokens) == len(prefixes) < sum(len(o) - 1 for o in options)  # shared, not repeated
    assert len(trie.picks) == sum(len(o) for o in options)  # every option token is scored once
    sees = trie.ancestry()
    for i, parent in enumerate(trie.parents):  # a node sees its parent and everything its parent sees
        assert sees[i, i] and (parent < 0 or bool((sees[i] >= sees[parent]).all()))


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_trie_scores_pick_the_labels_full_sequences_pick(tiny_model_dir, tokenizer, attention) -> None:
    """The scaled-up scorer (trie, tree mask, rows bounded by memory) gives each prompt the label that scoring
    every label's whole sequence separately gives (what the scorer before it computed), in any pass size."""
    from ftkit.evaluation.inference import score_options

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation=attention)
    model.eval()
    prompts = [
        "Query: my card has not arrived yet\nIntent:",
        "Query: how do I link my card to the app? it keeps failing\nIntent:",
        "Query: pin\nIntent:",
    ]
    options = _intent_options(tokenizer)
    ids = [tokenizer(p)["input_ids"] for p in prompts]
    whole = score_options(model, tokenizer.pad_token_id, ids, options)
    one_row_per_pass = score_options(model, tokenizer.pad_token_id, ids, options, budget=1)
    for i, prompt in enumerate(prompts):
        expected = [
            _full_sequence_logprob(model, encode_prompt_completion(tokenizer, prompt, f" {label}", 64))
            for label in INTENTS
        ]
        assert whole[i] == pytest.approx(expected, abs=2e-4)
        assert one_row_per_pass[i] == pytest.approx(expected, abs=2e-4)
        assert whole[i].index(max(whole[i])) == expected.index(max(expected))


def test_the_eager_tree_mask_is_made_on_the_inputs_device(tiny_model_dir) -> None:
    """Eager attention takes an additive mask: it must be built where the inputs are (a GPU), not on the CPU.
    The meta device stands for a GPU here: a tensor made on the CPU cannot be combined with it."""
    from ftkit.evaluation.inference import OptionTrie, _tree_mask

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation="eager")
    trie = OptionTrie.build([[5, 6, 2], [5, 7, 2]])  # three nodes: (5), (5, 6), (5, 7)
    attention_mask = torch.tensor([[0, 1, 1], [1, 1, 1]], device="meta")
    mask = _tree_mask(attention_mask, trie.ancestry(), model)
    assert mask.device == attention_mask.device and mask.dtype == torch.float32 and mask.shape == (2, 1, 6, 6)


def test_batched_greedy_replies_equal_one_at_a_time(tiny, tokenizer) -> None:
    """Left padding, the attention mask and the KV cache leave each prompt's greedy reply as it is alone."""
    from ftkit.evaluation.inference import generate_greedy

    prompts = [
        tokenizer(text)["input_ids"]
        for text in ("Q: hi\nA:", "Question: which parcel carrier delivers on Sundays in the city?\nAnswer:", "x")
    ]
    batched = generate_greedy(tiny, tokenizer, prompts, max_new_tokens=12)
    alone = [generate_greedy(tiny, tokenizer, [prompt], max_new_tokens=12)[0] for prompt in prompts]
    assert batched == alone
    assert all(batched)  # a random model still says something: the comparison is not of empty strings

"""Chat task: loss on every assistant turn and nothing else, found from the template's own tokens."""

from __future__ import annotations

import pytest

from ftkit.data.encoding import IGNORE_INDEX
from ftkit.errors import RowError
from ftkit.tasks import get_task
from ftkit.tasks.chat import ChatExample, ChatOptions

CONVERSATION = [
    {"role": "system", "content": "You are Northwind Goods' support assistant."},
    {"role": "user", "content": "My order NW-123456 is late."},
    {"role": "assistant", "content": "Sorry about that! Order NW-123456 ships tomorrow."},
    {"role": "user", "content": "Can I get a refund instead?"},
    {"role": "assistant", "content": "Yes: the refund reaches your card in 5-7 business days."},
]


@pytest.fixture
def chat():
    return get_task(ChatOptions(name="chat"), max_length=512)


def test_labels_cover_exactly_the_assistant_turns(chat, tokenizer) -> None:
    example = chat.make_example({"messages": CONVERSATION}, "f:row 1")
    encoded = chat.encode(example, tokenizer)
    text = tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    assert tokenizer.decode(encoded.input_ids) == text
    trained_runs: list[list[int]] = []
    current: list[int] = []
    for token, label in zip(encoded.input_ids, encoded.labels):
        if label == IGNORE_INDEX:
            if current:
                trained_runs.append(current)
            current = []
        else:
            assert label == token
            current.append(token)
    if current:
        trained_runs.append(current)
    decoded = [tokenizer.decode(run) for run in trained_runs]
    end = tokenizer.eos_token  # <|im_end|>: ends every assistant turn and carries loss
    assert decoded == [f"{CONVERSATION[2]['content']}{end}", f"{CONVERSATION[4]['content']}{end}"]
    untrained = tokenizer.decode([t for t, label in zip(encoded.input_ids, encoded.labels) if label == IGNORE_INDEX])
    assert "My order NW-123456 is late." in untrained and "refund instead" in untrained
    assert "<|im_start|>assistant\n" in untrained, "the role header is context, not a target"


def test_single_turn_and_system_prompt_option(tokenizer) -> None:
    chat = get_task(ChatOptions(name="chat", system_prompt="Be brief."), max_length=512)
    example = chat.make_example({"messages": CONVERSATION[1:3]}, "f:row 2")
    assert isinstance(example, ChatExample)
    assert example.messages[0] == {"role": "system", "content": "Be brief."}
    encoded = chat.encode(example, tokenizer)
    trained = tokenizer.decode([t for t, label in zip(encoded.input_ids, encoded.labels) if label != IGNORE_INDEX])
    assert trained.startswith(CONVERSATION[2]["content"])


def test_truncation_drops_the_oldest_tokens_and_keeps_the_last_reply(tokenizer) -> None:
    chat = get_task(ChatOptions(name="chat"), max_length=40)
    encoded = chat.encode(chat.make_example({"messages": CONVERSATION}, "f:row 3"), tokenizer)
    assert len(encoded.input_ids) == 40 and encoded.prompt_truncated
    assert CONVERSATION[4]["content"] in tokenizer.decode(
        [t for t, label in zip(encoded.input_ids, encoded.labels) if label != -100]
    )


@pytest.mark.parametrize(
    "messages, message",
    [
        ([], "non-empty list"),
        ([{"role": "user", "content": "hi"}], "must end with an assistant turn"),
        ([{"role": "assistant", "content": "hi"}], "needs a user turn"),
        ([{"role": "customer", "content": "hi"}, {"role": "assistant", "content": "yo"}], "turn 1 must be"),
        (
            [{"role": "user", "content": " "}, {"role": "assistant", "content": "yo"}],
            r"turn 1 \(user\) has empty content",
        ),
    ],
)
def test_malformed_conversations_name_the_row(chat, messages, message) -> None:
    with pytest.raises(RowError, match=message) as error:
        chat.make_example({"messages": messages}, "cs.jsonl:row 4")
    assert "cs.jsonl:row 4" in str(error.value)


def test_predict_generates_replies_and_scores_reference_likelihood(chat, tokenizer, tiny_model_dir) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    chat = get_task(ChatOptions(name="chat", max_new_tokens=5), max_length=512)
    examples = [chat.make_example({"messages": CONVERSATION[: n + 1]}, f"f:row {n}") for n in (2, 4)]
    predictions = chat.predict(model, tokenizer, examples, batch_size=2, progress=lambda n: None)
    assert len(predictions) == 2 and all(isinstance(p["reply"], str) for p in predictions)
    assert all(p["nll"] > 0 and p["tokens"] > 1 for p in predictions)
    scores = chat.score(predictions, examples)
    assert 0 <= scores["rouge_l"] <= 1 and scores["perplexity"] > 1


def test_batches_group_similar_lengths_and_predictions_keep_the_input_order(tokenizer, tiny_model_dir) -> None:
    """Evaluation batches rows of similar length (`length_batches`), and each prediction lands back on its own
    example: the reference replies' likelihoods, distinct per example, equal those scored one at a time."""
    import torch
    from transformers import AutoModelForCausalLM

    from ftkit.tasks.base import length_batches

    assert list(length_batches([[1, 2, 3], [1], [1, 2], [1]], 2)) == [[1, 3], [2, 0]]
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    chat = get_task(ChatOptions(name="chat", max_new_tokens=3), max_length=512)
    examples = [chat.make_example({"messages": CONVERSATION[: n + 1]}, f"f:row {n}") for n in (4, 2, 4, 2)]
    examples[2] = chat.make_example({"messages": CONVERSATION[1:5]}, "f:row 2")  # another length again
    seen: list[int] = []
    batched = chat.predict(model, tokenizer, examples, batch_size=2, progress=seen.append)
    alone = [chat.predict(model, tokenizer, [one], batch_size=1, progress=lambda n: None)[0] for one in examples]
    assert [p["nll"] for p in batched] == pytest.approx([p["nll"] for p in alone], rel=1e-4)
    assert len({round(p["nll"], 3) for p in alone}) == 3 and seen == [2, 2]  # distinct, so a shuffle would show


def test_sharegpt_alpaca_and_user_assistant_rows_become_messages() -> None:
    task = get_task(ChatOptions(name="chat"), 64)
    sharegpt = task.convert_row(
        {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}
    )
    assert sharegpt["messages"] == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    alpaca = {"instruction": "Summarise", "input": "long text", "output": "short"}
    assert task.convert_row(alpaca)["messages"][0] == {"role": "user", "content": "Summarise\n\nlong text"}
    columns = task.convert_row({"user": "where is my order?", "assistant": "On its way.", "system": "Be kind."})
    assert [t["role"] for t in columns["messages"]] == ["system", "user", "assistant"]
    assert task.convert_row({"text": "no conversation here"}) == {"text": "no conversation here"}

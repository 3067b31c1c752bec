"""The sentiment task: rows to examples, encoding with EOS in the loss, label-scoring prediction."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from ftkit.data.encoding import IGNORE_INDEX, encode_prompt_completion
from ftkit.errors import RowError
from ftkit.tasks import get_task
from ftkit.tasks.sentiment import SentimentOptions


@pytest.fixture
def task():
    return get_task(SentimentOptions(name="sentiment", labels=["negative", "neutral", "positive"]), max_length=64)


def test_row_becomes_prompt_and_label_word(task) -> None:
    example = task.make_example({"text": "Great soup.", "label": "positive"}, "f:row 1")
    assert example.prompt == "Review: Great soup.\nSentiment:"
    assert example.completion == " positive"
    assert example.reference == "positive"


def test_integer_labels_index_the_label_list(task) -> None:
    assert task.make_example({"text": "Fine.", "label": 1}, "f:row 1").reference == "neutral"


@pytest.mark.parametrize(
    "row, message",
    [
        ({"text": "ok", "label": "great"}, "unknown label 'great'"),
        ({"text": "ok", "label": 7}, "unknown label 7"),
        ({"text": "ok", "label": True}, "'label' is True"),
        ({"text": "  ", "label": "positive"}, "'text' must be a non-empty string"),
        ({"label": "positive"}, "'text' must be a non-empty string"),
        ({"text": 3.5, "label": "positive"}, "'text' must be a non-empty string"),
    ],
)
def test_bad_rows_name_the_row(task, row, message) -> None:
    with pytest.raises(RowError, match=message) as error:
        task.make_example(row, "data.jsonl:row 12")
    assert "data.jsonl:row 12" in str(error.value)


def test_template_with_a_field_the_task_does_not_have_is_refused() -> None:
    with pytest.raises(ValidationError, match=r"unknown field \{title\}; this template may use \{text\}"):
        SentimentOptions(name="sentiment", prompt_template="{title}: {text}")


def test_eos_is_trained_and_prompt_is_not(tokenizer) -> None:
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    encoded = encode_prompt_completion(tokenizer, "Review: nice\nSentiment:", " positive", 64)
    trained = [t for t, label in zip(encoded.input_ids, encoded.labels) if label != IGNORE_INDEX]
    assert trained[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(trained[:-1]) == " positive"
    n_prompt = len(tokenizer("Review: nice\nSentiment:")["input_ids"])
    assert encoded.labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert not encoded.prompt_truncated


def test_truncation_cuts_the_prompt_middle_never_the_completion(tokenizer) -> None:
    prompt = "Classify this review.\n" + "word " * 200 + "\nSentiment:"
    encoded = encode_prompt_completion(tokenizer, prompt, " negative", 32)
    assert len(encoded.input_ids) == 32 and encoded.prompt_truncated
    assert tokenizer.decode(encoded.input_ids[-2:]) == " negative" + tokenizer.eos_token
    text = tokenizer.decode(encoded.input_ids)
    assert text.startswith("Classify") and "Sentiment: negative" in text


def test_labels_must_be_distinct() -> None:
    with pytest.raises(ValueError):
        SentimentOptions(name="sentiment", labels=["a", "a"])


def test_a_task_name_is_taken_once() -> None:
    from ftkit.errors import FtkitError
    from ftkit.tasks.base import register
    from ftkit.tasks.sentiment import Sentiment

    class Another(Sentiment):
        pass

    with pytest.raises(FtkitError, match="task name 'sentiment' is registered twice"):
        register(Another)
    assert get_task(SentimentOptions(name="sentiment"), 64).__class__ is Sentiment


def test_accuracy_is_compared_with_mcnemar_and_macro_f1_with_a_paired_bootstrap(task) -> None:
    assert task.paired_test("accuracy") == "mcnemar"
    assert task.paired_test("macro_f1") == "bootstrap"
    examples = [task.make_example({"text": "ok", "label": label}, f"f:row {i}") for i, label in enumerate("01")]
    assert task.score(["negative", "negative"], examples, only="accuracy") == {"accuracy": 0.5}

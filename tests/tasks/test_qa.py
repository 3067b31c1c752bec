"""QA task: prompts with and without context, several acceptable answers, generation, SQuAD scoring."""

from __future__ import annotations

import pytest

from ftkit.errors import RowError
from ftkit.tasks import get_task
from ftkit.tasks.qa import QAOptions


@pytest.fixture
def qa():
    return get_task(QAOptions(name="qa"), max_length=128)


def test_context_and_no_context_templates(qa) -> None:
    with_context = qa.make_example({"question": "Who?", "context": "Ana did it.", "answer": "Ana"}, "f:row 1")
    assert "Context: Ana did it." in with_context.prompt and with_context.completion == " Ana"
    without = qa.make_example({"question": "Capital of France?", "answer": ["Paris", "paris, France"]}, "f:row 2")
    assert "Context" not in without.prompt and without.reference == ["Paris", "paris, France"]


@pytest.mark.parametrize("answer", [None, "", [], ["ok", ""], {"text": "x"}, True])
def test_bad_answers_name_the_row(qa, answer) -> None:
    with pytest.raises(RowError, match="f.jsonl:row 9: 'answer'"):
        qa.make_example({"question": "Q?", "answer": answer}, "f.jsonl:row 9")


def test_score_is_best_over_acceptable_answers(qa) -> None:
    examples = [
        qa.make_example({"question": "When?", "answer": ["1998", "in 1998"]}, "f:row 1"),
        qa.make_example({"question": "Who?", "answer": "Dr. Ana Ruiz"}, "f:row 2"),
    ]
    scores = qa.score(["In 1998.", "Ana Ruiz"], examples)
    assert scores["exact_match"] == pytest.approx(0.5)
    assert scores["f1"] == pytest.approx((1.0 + 2 * (2 / 3 * 1.0) / (2 / 3 + 1.0)) / 2)
    assert qa.per_example(["the 1998"], examples[:1]) == {"f1": [1.0], "exact_match": [1.0]}


def test_predict_returns_one_line_per_example(qa, tokenizer, tiny_model_dir) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    examples = [
        qa.make_example({"question": f"Q{i}?", "context": "Some text.", "answer": "x"}, f"f:row {i}") for i in range(3)
    ]
    predictions = qa.predict(model, tokenizer, examples, batch_size=2, progress=lambda n: None)
    assert len(predictions) == 3 and all("\n" not in p for p in predictions)
    # Batched generation is independent of batch composition.
    assert qa.predict(model, tokenizer, examples[2:], batch_size=1, progress=lambda n: None) == predictions[2:]


def test_first_non_empty_line_is_the_answer() -> None:
    from ftkit.tasks.qa import first_line

    assert first_line("\n  Paris\nThe capital of France") == "Paris"
    assert first_line("\n\n") == ""


def test_alpaca_rows_become_a_question_and_its_answer() -> None:
    task = get_task(QAOptions(name="qa"), 64)
    alpaca = {"instruction": "Summarise", "input": "long text", "output": "short"}
    assert task.convert_row(alpaca) == alpaca | {"question": "Summarise\n\nlong text", "answer": "short"}
    assert task.convert_row({"question": "q?", "answer": "a"}) == {"question": "q?", "answer": "a"}


def test_squad_answers_in_every_layout_become_the_answer_list() -> None:
    task = get_task(QAOptions(name="qa"), 64)
    row = {"question": "When?", "context": "Ana was born in 1990."}
    for answers in (
        ["1990", "in 1990"],
        [{"text": "1990", "answer_start": 16}, {"text": "in 1990", "answer_start": 13}],
        {"text": ["1990", "in 1990"], "answer_start": [16, 13]},
    ):
        example = task.make_example(task.convert_row(row | {"answers": answers}), "f:row 1")
        assert example.reference == ["1990", "in 1990"]

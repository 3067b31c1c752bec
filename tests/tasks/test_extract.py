"""Extract task: rows to JSON completions, replies parsed back, field F1 and per-field metrics, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ftkit.cli import main
from ftkit.data.encoding import IGNORE_INDEX
from ftkit.errors import RowError
from ftkit.recipe import load_recipe
from ftkit.tasks import get_task
from ftkit.tasks.extract import ExtractOptions, field_f1, parse_reply

REPO = Path(__file__).resolve().parents[2]
FIELDS = ["intent", "order_id", "product", "email"]


@pytest.fixture
def task():
    return get_task(ExtractOptions(name="extract", fields=FIELDS), max_length=192)


def row(text: str, **fields: str | None) -> dict:
    return {"text": text, "fields": fields}


def test_a_row_becomes_a_prompt_and_the_json_object_in_field_order(task) -> None:
    example = task.make_example(row("Where is NW-123456?", order_id="NW-123456", intent="track_order"), "f:row 1")
    assert example.prompt.endswith("Message: Where is NW-123456?\nJSON:")
    assert "intent, order_id, product, email" in example.prompt
    assert example.completion == ' {"intent": "track_order", "order_id": "NW-123456", "product": null, "email": null}'
    assert example.reference == {"intent": "track_order", "order_id": "NW-123456", "product": None, "email": None}
    assert example.content == "Where is NW-123456?"


def test_fields_may_be_a_json_string(task) -> None:
    example = task.make_example({"text": "hi", "fields": '{"intent": "account_access"}'}, "f:row 2")
    assert example.reference["intent"] == "account_access" and example.reference["email"] is None


@pytest.mark.parametrize(
    "fields, message",
    [
        ("{not json", "'fields' is a string but not JSON"),
        (["intent"], "'fields' must be a JSON object"),
        ({"intent": "x", "colour": "red"}, "keys \\['colour'\\] that are not in task.fields"),
        ({"intent": {"nested": 1}}, "field 'intent' holds a dict"),
    ],
)
def test_bad_fields_name_the_row(task, fields, message) -> None:
    with pytest.raises(RowError, match=message) as error:
        task.make_example({"text": "hello", "fields": fields}, "data.jsonl:row 7")
    assert "data.jsonl:row 7" in str(error.value)


def test_trained_tokens_are_the_json_object_and_eos(task, tokenizer) -> None:
    example = task.make_example(row("Cancel NW-000001 please", intent="cancel_order", order_id="NW-000001"), "f:row 1")
    encoded = task.encode(example, tokenizer)
    trained = [token for token, label in zip(encoded.input_ids, encoded.labels) if label != IGNORE_INDEX]
    assert trained[-1] == tokenizer.eos_token_id
    assert json.loads(tokenizer.decode(trained[:-1])) == {
        "intent": "cancel_order",
        "order_id": "NW-000001",
        "product": None,
        "email": None,
    }


def test_the_first_json_object_of_a_reply_is_the_prediction() -> None:
    assert parse_reply(' {"intent": "refund_status", "email": " a@b.co "} and more text', FIELDS) == {
        "intent": "refund_status",
        "order_id": None,
        "product": None,
        "email": "a@b.co",
    }
    assert parse_reply('Sure! {broken {"intent": "x"}', FIELDS) == {
        "intent": "x",
        "order_id": None,
        "product": None,
        "email": None,
    }
    assert parse_reply("I cannot help with that.", FIELDS) is None
    assert parse_reply("[1, 2] then nothing", FIELDS) is None


def test_field_f1_counts_found_invented_and_missed_fields() -> None:
    truth = [{"intent": "a", "order_id": "NW-1", "product": None, "email": None}]
    assert field_f1([{"intent": "a", "order_id": "NW-1", "product": None, "email": None}], truth) == 1.0
    # one right (intent), one invented (product), one missed (order_id): 2*1 / (2*1 + 1 + 1)
    assert field_f1([{"intent": "a", "order_id": None, "product": "mug", "email": None}], truth) == pytest.approx(0.5)
    assert field_f1([None], truth) == 0.0
    assert field_f1([{"intent": None}], [{"intent": None}]) == 1.0


def test_metrics_paired_tests_and_example_scores(task) -> None:
    examples = [
        task.make_example(row("m1", intent="track_order", order_id="NW-1"), "f:row 1"),
        task.make_example(row("m2", intent="billing_issue"), "f:row 2"),
    ]
    predictions = [
        {"reply": "...", "fields": {"intent": "track_order", "order_id": "NW-1", "product": None, "email": None}},
        {"reply": "no json", "fields": None},
    ]
    scores = task.score(predictions, examples)
    assert task.metrics[0] == "field_f1" and set(scores) == set(task.metrics)
    assert scores["field_f1"] == pytest.approx(2 * 2 / (2 * 2 + 0 + 1))
    assert scores["json_valid"] == 0.5 and scores["exact_match"] == 0.5
    assert scores["field:intent"] == 0.5 and scores["field:email"] == 0.5  # null = null is right; no JSON, no field
    assert task.score(predictions, examples, only="json_valid") == {"json_valid": 0.5}
    assert task.paired_test("field_f1") == "bootstrap"
    assert {task.paired_test(m) for m in task.metrics[1:]} == {"mcnemar"}
    assert task.example_scores(predictions, examples) == [1.0, 0.0]
    assert task.shown_input(examples[0]) == "m1" and task.shown_prediction(predictions[1]) == "no json"


def test_shipped_data_has_every_extracted_value_in_its_message() -> None:
    intents = set()
    for split in ("train", "validation", "test"):
        for line in (REPO / "data" / "extract" / f"{split}.jsonl").read_text().splitlines():
            data = json.loads(line)
            assert set(data["fields"]) == set(FIELDS)
            intents.add(data["fields"]["intent"])
            for name in ("order_id", "product", "email"):
                value = data["fields"][name]
                assert value is None or value.lower() in data["text"].lower()
    assert len(intents) == 10 and None not in intents


def test_the_recipe_trains_and_evaluates_end_to_end(tmp_path, tiny_model_dir) -> None:
    """The shipped recipe's task and data on a tiny model: a run that writes every report."""
    rows = (REPO / "data" / "extract" / "train.jsonl").read_text().splitlines()
    test_rows = (REPO / "data" / "extract" / "test.jsonl").read_text().splitlines()
    (tmp_path / "train.jsonl").write_text("\n".join(rows[:16]) + "\n")
    (tmp_path / "test.jsonl").write_text("\n".join(test_rows[:6]) + "\n")
    shipped = REPO / "recipes" / "extract-smollm2-qlora.yaml"
    overrides = [
        f"model.source={tiny_model_dir}",
        "model.quantization=none",
        "model.compute_dtype=float32",
        f"data.train={tmp_path / 'train.jsonl'}",
        "data.validation=null",
        f"data.test={tmp_path / 'test.jsonl'}",
        "train.max_steps=2",
        "train.batch_size=4",
        "train.grad_accum=1",
        "task.max_new_tokens=8",
        "eval.bootstrap=100",
        f"output.dir={tmp_path / 'run'}",
    ]
    assert load_recipe(shipped, overrides).task.name == "extract"
    assert main(["train", str(shipped), *overrides]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["task"] == "extract" and metrics["primary_metric"] == "field_f1" and metrics["examples"] == 6
    tests = {c["metric"]: c["test"] for c in metrics["comparisons"]}
    assert tests["field_f1"] == "paired bootstrap" and tests["json_valid"] == "McNemar exact"
    predictions = [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    assert {"reply", "fields"} <= set(predictions[0]["adapter"])
    assert "Examples adapter fixed" in (tmp_path / "run" / "report.md").read_text()

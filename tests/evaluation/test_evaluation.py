"""`ftkit eval`: base and several adapters on one split or any file, reports and statistics."""

from __future__ import annotations

import json

import pytest

from ftkit.cli import main
from ftkit.evaluation.evaluator import EvalReport, SystemResult
from ftkit.evaluation.reports import render_markdown, to_json
from ftkit.evaluation.stats import Interval
from ftkit.recipe import load_recipe
from ftkit.tasks import get_task
from ftkit.tasks.sentiment import SentimentOptions


@pytest.fixture
def trained(write_recipe):
    path = write_recipe("evalrun", train={"max_steps": 2})
    assert main(["train", str(path), "--no-eval"]) == 0
    return path, load_recipe(path).run_dir / "adapter"


def test_eval_compares_base_and_two_adapters_on_one_split(trained, tmp_path, capsys) -> None:
    path, adapter = trained
    out = tmp_path / "eval-out"
    code = main(
        [
            "eval",
            str(path),
            "--adapter",
            str(adapter),
            "--adapter",
            str(adapter),
            "--split",
            "validation",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["systems"]) == ["base", "evalrun", "evalrun-1"]
    assert metrics["examples"] == 8 and metrics["split"] == "validation"
    same = [c for c in metrics["comparisons"] if c["system"] == "evalrun-1" and c["metric"] == "accuracy"]
    first = [c for c in metrics["comparisons"] if c["system"] == "evalrun" and c["metric"] == "accuracy"]
    assert same[0]["difference"] == first[0]["difference"], "the same adapter twice scores identically"
    for png in ("metrics.png", "confusion_base.png", "confusion_evalrun.png", "loss_curves.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    assert "![loss_curves](loss_curves.png)" in (out / "report.md").read_text()
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and {"where", "input", "reference", "base", "evalrun"} <= set(rows[0])
    assert "evalrun" in capsys.readouterr().out


def test_eval_on_another_file_uses_the_recipe_column_mapping(trained, tmp_path) -> None:
    path, adapter = trained
    other = tmp_path / "other.csv"
    other.write_text("sentence,polarity\nGreat value for the price.,1\nThe lid cracked on day one.,0\n")
    code = main(
        [
            "eval",
            str(path),
            "--adapter",
            str(adapter),
            "--data",
            str(other),
            "--out",
            str(tmp_path / "o"),
            "data.columns={text: sentence, label: polarity}",
        ]
    )
    assert code == 0
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert metrics["examples"] == 2 and metrics["split"].endswith("other.csv")


def test_eval_without_out_writes_into_the_run_directory(trained) -> None:
    path, adapter = trained
    assert main(["eval", str(path), "--adapter", str(adapter)]) == 0
    reports = load_recipe(path).run_dir / "eval"
    assert json.loads((reports / "metrics.json").read_text())["split"] == "test"
    assert (reports / "report.md").is_file() and (reports / "predictions.jsonl").is_file()


def test_eval_with_a_folder_that_is_not_an_adapter_is_a_clear_error(trained, tmp_path, capsys) -> None:
    path, _ = trained
    assert main(["eval", str(path), "--adapter", str(tmp_path)]) == 2
    assert "not an adapter folder" in capsys.readouterr().err


def test_report_says_plainly_when_a_difference_is_not_significant() -> None:
    task = get_task(SentimentOptions(name="sentiment"), 64)
    examples = [task.make_example({"text": f"t{i}", "label": i % 2}, f"f:row {i}") for i in range(10)]
    from ftkit.evaluation.evaluator import Comparison

    ci = Interval(0.5, 0.2, 0.8, 0.95)
    report = EvalReport(
        task=task,
        split="test",
        examples=examples,
        metric_names=["accuracy"],
        systems=[
            SystemResult("base", ["negative"] * 10, {"accuracy": ci}, 1.0, [float(i % 2 == 0) for i in range(10)]),
            SystemResult("adapter", ["positive"] * 10, {"accuracy": ci}, 2.0, [float(i % 2 == 1) for i in range(10)]),
        ],
        comparisons=[Comparison("adapter", "accuracy", 0.0, 1.0, "McNemar exact")],
        resamples=100,
    )
    text = render_markdown(report)
    assert "not significant" in text and "could be noise" in text
    assert "Examples adapter fixed (5 in all)" in text and "Examples adapter broke (5 in all)" in text
    assert to_json(report)["comparisons"][0]["significant"] is False

"""Evaluation samples that represent the split, warnings about held-out labels, truncation, honest intervals.

The end-to-end test trains the tiny model on a label-sorted file (every negative row, then every positive
one) and evaluates `eval.max_examples` of it: both classes in proportion, and the report says which sample.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ftkit.evaluation import evaluator, sample
from ftkit.tasks import Example, get_task
from ftkit.tasks.qa import QAOptions
from ftkit.tasks.sentiment import SentimentOptions


def _examples(labels: list[str]) -> list[Example]:
    return [Example(f"p{i}", f" {label}", label, f"f:row {i + 1}") for i, label in enumerate(labels)]


def test_a_stratified_sample_keeps_each_label_in_proportion_and_file_order() -> None:
    task = get_task(SentimentOptions(name="sentiment", labels=["a", "b", "c"]), 64)
    split = _examples(["a"] * 60 + ["b"] * 30 + ["c"] * 10)  # sorted by label, as many public files are
    drawn = sample.draw(task, split, 20, seed=3)
    assert Counter(e.reference for e in drawn.examples) == {"a": 12, "b": 6, "c": 2}
    rows = [int(e.where.split()[-1]) for e in drawn.examples]
    assert rows == sorted(rows) and drawn.stratified
    assert drawn.describe() == "sample of 20 of 100 rows, stratified by label, seed 3"
    assert sample.draw(task, split, 20, seed=3) == drawn, "seeded"
    assert sample.draw(task, split, 20, seed=4) != drawn
    assert sample.draw(task, split, None, seed=0).describe() == "all 100 rows"


def test_tasks_without_labels_get_a_uniform_seeded_sample() -> None:
    task = get_task(QAOptions(name="qa"), 64)
    split = [Example(f"q{i}", " a", ["a"], f"f:row {i + 1}") for i in range(50)]
    drawn = sample.draw(task, split, 10, seed=0)
    assert not drawn.stratified and len(drawn.examples) == 10
    assert [e.where for e in drawn.examples] != [e.where for e in split[:10]], "not the head"


def test_single_class_and_unseen_labels_are_warnings() -> None:
    task = get_task(SentimentOptions(name="sentiment", labels=None), 64)
    [one] = sample.warnings(task, _examples(["a", "b"]), _examples(["a", "a"]), "test")
    assert "the held-out test examples all have one label ('a')" in one
    [unseen] = sample.warnings(task, _examples(["a", "b"]), _examples(["a", "c", "c"]), "test")
    assert "held-out test labels ['c'] never occur in the training data (2 examples)" in unseen


def test_truncation_is_counted_from_the_task_with_the_max_length_that_fits(tokenizer) -> None:
    task = get_task(SentimentOptions(name="sentiment"), 32)
    short, long = "good", " ".join(["word"] * 60)
    examples = [task.make_example({"text": t, "label": 1}, f"f:row {i}") for i, t in enumerate([short, long] * 5)]
    cut = evaluator.count_truncated(task, tokenizer, examples)
    assert (cut.count, cut.total, cut.where) == (5, 10, "the middle of the prompt") and cut.loud
    budget = task.eval_budget(tokenizer)
    assert cut.fits == 32 + len(task.eval_prompt_ids(examples[1], tokenizer)) - budget
    assert cut.describe().startswith("WARNING: truncated inputs: 5 of 10 (50.0%) lost the middle of the prompt")
    assert f"data.max_length: {cut.fits} would fit them all" in cut.describe()
    fits = get_task(SentimentOptions(name="sentiment"), cut.fits)
    assert evaluator.count_truncated(fits, tokenizer, examples).count == 0


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
@given(
    classes=st.integers(2, 40),
    n=st.integers(2, 48),
    accuracy=st.floats(0, 1),
    seed=st.integers(0, 2**16),
)
def test_every_reported_interval_contains_its_estimate(classes: int, n: int, accuracy: float, seed: int) -> None:
    """Small many-class samples, where a percentile bootstrap of macro-F1 can miss its own estimate."""
    rng = np.random.default_rng(seed)
    labels = [f"c{i}" for i in range(classes)]
    task = get_task(SentimentOptions(name="sentiment", labels=labels), 64)
    references = [labels[i] for i in rng.integers(0, classes, n)]
    predictions = [r if rng.random() < accuracy else labels[rng.integers(0, classes)] for r in references]
    result = evaluator.score_system(task, "s", predictions, 1.0, _examples(references), list(task.metrics), 100)
    for metric, interval in result.metrics.items():
        if interval.available:
            assert interval.low <= interval.point <= interval.high, (metric, interval)
        else:
            assert np.isnan(interval.low) and np.isnan(interval.high), (metric, interval)


def test_the_issue_case_77_classes_48_examples_has_an_interval_around_its_estimate() -> None:
    rng = np.random.default_rng(7)
    labels = [f"intent{i}" for i in range(77)]
    task = get_task(SentimentOptions(name="sentiment", labels=labels), 64)
    references = [labels[i] for i in rng.integers(0, 77, 48)]
    predictions = [r if rng.random() < 0.2 else labels[rng.integers(0, 77)] for r in references]
    macro = evaluator.score_system(task, "s", predictions, 1.0, _examples(references), ["macro_f1"], 1000)
    interval = macro.metrics["macro_f1"]
    assert interval.method in ("BCa", "none")
    assert not interval.available or interval.low <= interval.point <= interval.high


def test_max_examples_on_a_label_sorted_file_evaluates_both_classes_and_says_so(
    trained_run, sentiment_files: dict[str, Path], capsys
) -> None:
    rows = [json.loads(line) for line in sentiment_files["train"].read_text().splitlines()]
    rows = sorted(rows * 2, key=lambda r: r["label"])  # 64 rows: every negative first
    sentiment_files["test"].write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = trained_run("sorted", evaluate=True, eval={"max_examples": 16, "seed": 1}, data={"allow_overlap": True})
    out = capsys.readouterr().out
    counts = Counter(r["label"] for r in rows)
    said = f"sample of 16 of {len(rows)} rows, stratified by label, seed 1"
    assert f"examples: {said}" in out
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["sample"]["description"] == said and metrics["examples"] == 16
    assert "truncation" in metrics and metrics["truncation"]["of"] == 16
    predicted = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    got = Counter(p["reference"] for p in predicted)
    expected = {label: round(16 * n / len(rows)) for label, n in counts.items()}
    assert got == expected and len(got) == 2, got
    assert said in (run / "report.md").read_text()

"""PNG plots: each function writes a real, readable PNG atomically, and refuses input it cannot draw."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from ftkit.evaluation import plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path, min_width: int = 300, min_height: int = 200) -> None:
    """A complete PNG of a plausible size, and no temporary file left beside it."""
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
    assert min_width <= width <= 4000 and min_height <= height <= 4000, (width, height)
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []


def write_log(path: Path, rows: list[dict[str, Any]], tail: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + tail, encoding="utf-8")
    return path


TRAIN_ROWS = [
    {"step": s, "epoch": s / 25, "loss": 5.0 / s, "grad_norm": 1.0, "learning_rate": 3e-4}
    for s in (1, 5, 10, 15, 20, 25)
]
EVAL_ROWS = [{"step": 10, "eval_loss": 0.9}, {"step": 25, "eval_loss": 0.4}]
SUMMARY_ROW = {"step": 25, "train_runtime": 99.0, "train_loss": 1.23}


def interval(value: float, half: float = 0.05) -> dict[str, float]:
    return {"value": value, "ci_low": value - half, "ci_high": value + half}


# --- loss curves ------------------------------------------------------------------------------


def test_loss_curves_training_and_validation(tmp_path: Path) -> None:
    log = write_log(
        tmp_path / "run" / "train_log.jsonl",
        [*TRAIN_ROWS[:3], EVAL_ROWS[0], *TRAIN_ROWS[3:], EVAL_ROWS[1], SUMMARY_ROW],
    )
    out = tmp_path / "plots" / "loss.png"
    assert plots.loss_curves(log, out) == out
    assert_png(out)


def test_read_losses_skips_summary_and_broken_lines(tmp_path: Path) -> None:
    log = write_log(
        tmp_path / "train_log.jsonl",
        [*TRAIN_ROWS, *EVAL_ROWS, {"step": 26, "loss": float("nan")}, SUMMARY_ROW],
        tail='{"step": 30, "lo',
    )  # a crash mid-write
    train, validation = plots.read_losses(log)
    assert [s for s, _ in train] == [1, 5, 10, 15, 20, 25]
    assert validation == [(10, 0.9), (25, 0.4)]


def test_loss_curves_only_training_rows(tmp_path: Path) -> None:
    log = write_log(tmp_path / "train_log.jsonl", [*TRAIN_ROWS, SUMMARY_ROW])
    assert plots.loss_curves(log, tmp_path / "loss.png") == tmp_path / "loss.png"
    assert_png(tmp_path / "loss.png")


def test_loss_curves_single_row(tmp_path: Path) -> None:
    log = write_log(tmp_path / "train_log.jsonl", TRAIN_ROWS[:1])
    assert plots.loss_curves(log, tmp_path / "loss.png") is not None
    assert_png(tmp_path / "loss.png")


@pytest.mark.parametrize(
    "content", [None, "", "\n", json.dumps(SUMMARY_ROW) + "\n"], ids=["missing", "empty", "blank", "summary-only"]
)
def test_loss_curves_nothing_to_plot(tmp_path: Path, content: str | None) -> None:
    log = tmp_path / "train_log.jsonl"
    if content is not None:
        log.write_text(content, encoding="utf-8")
    out = tmp_path / "loss.png"
    assert plots.loss_curves(log, out) is None
    assert not out.exists()


def test_png_replaces_existing_file(tmp_path: Path) -> None:
    out = tmp_path / "loss.png"
    out.write_bytes(b"stale")
    plots.loss_curves(write_log(tmp_path / "train_log.jsonl", TRAIN_ROWS), out)
    assert_png(out)


# --- confusion matrix ---------------------------------------------------------------------------


def test_confusion_matrix(tmp_path: Path) -> None:
    out = tmp_path / "cm.png"
    assert plots.confusion_matrix(["negative", "positive"], [[80, 20], [30, 70]], "adapter on test", out) == out
    assert_png(out)


def test_confusion_matrix_many_long_labels(tmp_path: Path) -> None:
    labels = ["very negative", "negative", "neutral", "positive", "very positive"]
    matrix = [[10 if i == j else 1 for j in range(5)] for i in range(5)]
    assert_png(plots.confusion_matrix(labels, matrix, "5 classes", tmp_path / "cm5.png"))


@pytest.mark.parametrize(
    "matrix",
    [[[1, 2], [3, 4]], [[1, 2, 3], [4, 5, 6]], [[1, 2, 3], [4, 5], [6, 7, 8]], []],
    ids=["too-small", "too-few-rows", "ragged", "empty"],
)
def test_confusion_matrix_shape_must_match_labels(tmp_path: Path, matrix: list[list[int]]) -> None:
    out = tmp_path / "cm.png"
    with pytest.raises(
        ValueError, match=r"3 labels \(a, b, c\); expected 3x3 \(rows = reference, columns = predicted\)"
    ):
        plots.confusion_matrix(["a", "b", "c"], matrix, "t", out)
    assert not out.exists()


def test_confusion_matrix_refuses_negative_counts(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="integer >= 0"):
        plots.confusion_matrix(["a", "b"], [[1, -1], [0, 2]], "t", tmp_path / "cm.png")


# --- metric bars --------------------------------------------------------------------------------


def test_metric_bars_one_system(tmp_path: Path) -> None:
    systems = {"base": {"metrics": {"accuracy": interval(0.75), "macro_f1": interval(0.748)}, "eval_seconds": 39.5}}
    out = tmp_path / "bars.png"
    assert plots.metric_bars(systems, out, "base only") == out
    assert_png(out)


def test_metric_bars_three_systems(tmp_path: Path) -> None:
    systems = {
        name: {"metrics": {"accuracy": interval(v), "macro_f1": {"value": v, "ci_low": v - 0.06, "ci_high": v + 0.03}}}
        for name, v in (("base", 0.75), ("adapter", 0.91), ("r8", 0.86))
    }
    assert_png(plots.metric_bars(systems, tmp_path / "bars.png", "sentiment, test split"))


def test_metric_bars_from_metrics_json_with_mixed_scales(tmp_path: Path) -> None:
    """chrF (0..100) gets its own panel; a CI that does not contain the value still draws."""
    metrics: dict[str, Any] = {
        "schema": "ftkit.metrics/1",
        "systems": {
            "base": {"metrics": {"exact_match": interval(0.3), "chrf": interval(24.0, 3.0)}},
            "adapter": {
                "metrics": {"exact_match": {"value": 0.6, "ci_low": 0.61, "ci_high": 0.7}, "chrf": interval(48.0, 3.0)}
            },
        },
    }
    assert_png(plots.metric_bars(metrics["systems"], tmp_path / "bars.png", "qa"))


def test_metric_bars_refuses_empty(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no systems"):
        plots.metric_bars({}, tmp_path / "bars.png", "t")
    with pytest.raises(ValueError, match="no metrics"):
        plots.metric_bars({"base": {"metrics": {}}}, tmp_path / "bars.png", "t")


def test_loss_curves_show_the_validation_metric_and_the_kept_step(tmp_path: Path) -> None:
    metric_rows = [{"step": 10, "eval_loss": 0.9, "eval_accuracy": 0.7}, {"step": 25, "eval_accuracy": 0.6}]
    resumed = {"step": 10, "eval_accuracy": 0.8}
    log = write_log(tmp_path / "run" / "train_log.jsonl", [*TRAIN_ROWS, *metric_rows, resumed])
    assert plots.read_metric(log, "accuracy") == [(10, 0.8), (25, 0.6)], "the last row per step (a resumed run)"
    plain = plots.loss_curves(log, tmp_path / "plain.png")
    (tmp_path / "run" / "kept.json").write_text(json.dumps({"keep": "best", "step": 10, "metric": "accuracy"}))
    assert plots.read_kept(log) == {"keep": "best", "step": 10, "metric": "accuracy"}
    marked = plots.loss_curves(log, tmp_path / "marked.png")
    assert plain is not None and marked is not None
    assert_png(marked)
    (_, plain_height), (_, marked_height) = Image.open(plain).size, Image.open(marked).size
    assert marked_height > plain_height, "a second panel: the validation metric"

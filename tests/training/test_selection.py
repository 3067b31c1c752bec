"""Keeping the best adapter by the task's own validation metric, early stopping, and what the run records.

The validation split here is training rows with their labels flipped: the better the model learns the
training labels, the worse it does on validation, so the metric peaks early and then falls, on any seed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from ftkit.cli import main
from ftkit.data.prepared import prepare
from ftkit.recipe import RecipeError, load_recipe
from ftkit.runs import RunDir
from ftkit.training import selection
from ftkit.training.trainer import train

STEPS = {"max_steps": 12, "eval_every": 2, "save_every": 4, "learning_rate": 3e-2, "warmup_ratio": 0.0}


def flipped_validation(train_file: Path, out: Path, n: int = 12) -> Path:
    """The first `n` training rows with the other label: a validation split training makes worse."""
    rows = [json.loads(line) for line in train_file.read_text().splitlines()[:n]]
    flip = {"positive": "negative", "negative": "positive"}
    out.write_text("".join(json.dumps(r | {"label": flip[r["label"]]}) + "\n" for r in rows))
    return out


@pytest.fixture
def overfit_recipe(write_recipe, sentiment_files, tmp_path):
    def write(name: str, **train: Any) -> Path:
        validation = flipped_validation(sentiment_files["train"], tmp_path / "flipped.jsonl")
        # The overlap is the point: the same texts, the other labels.
        data = {"validation": str(validation), "allow_overlap": True}
        return write_recipe(name, data=data, train=STEPS | train)

    return write


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "adapter_model.safetensors")


def _validation(run: RunDir, metric: str = "accuracy") -> dict[int, float]:
    rows = [json.loads(line) for line in run.train_log.read_text().splitlines()]
    return {row["step"]: row[f"eval_{metric}"] for row in rows if f"eval_{metric}" in row}


def test_keep_best_keeps_the_peak_and_early_stopping_ends_within_patience(overfit_recipe, capsys) -> None:
    path = overfit_recipe("best", early_stopping={"patience": 2})
    assert main(["train", str(path)]) == 0
    run = RunDir(load_recipe(path).run_dir)
    curve = _validation(run)
    kept = json.loads(run.kept.read_text())
    peak = max(curve, key=lambda step: (curve[step], -step))  # the first step with the highest accuracy
    assert kept["keep"] == "best" and kept["step"] == peak and kept["value"] == curve[peak]
    assert kept["evaluations"] == [{"step": s, "value": v} for s, v in sorted(curve.items())]
    assert peak < max(curve), "the flipped validation split peaks before the last evaluation"
    # Early stopping: at most `patience` evaluations after the peak, and before max_steps.
    assert kept["early_stopped"] and kept["steps_trained"] < STEPS["max_steps"]
    assert kept["steps_trained"] <= peak + 2 * STEPS["eval_every"]
    assert f"early stopping ended training at step {kept['steps_trained']}" in kept["reason"]
    # The saved adapter is the peak checkpoint's, which rotation kept.
    for key, value in _weights(run.checkpoints / f"checkpoint-{peak}").items():
        torch.testing.assert_close(_weights(run.adapter)[key], value, rtol=0, atol=0)
    out = capsys.readouterr()
    assert f"kept the adapter of step {peak}: highest validation accuracy" in out.out
    assert "step 2: validation loss" in out.out and ", accuracy " in out.out
    metrics = json.loads(run.metrics.read_text())
    assert metrics["training"]["kept_step"] == peak
    assert "- kept_step: " in run.report.read_text() and "![loss_curves](loss_curves.png)" in run.report.read_text()

    # Held-out test evaluation of the kept adapter: ftkit eval computes the same numbers.
    assert main(["eval", str(path), "--adapter", str(run.adapter)]) == 0
    again = json.loads(run.eval.metrics.read_text())
    [evaluated] = [system for name, system in again["systems"].items() if name != "base"]
    assert evaluated["metrics"]["accuracy"] == metrics["systems"]["adapter"]["metrics"]["accuracy"]


def test_keep_last_keeps_the_last_step_and_still_logs_the_metric(overfit_recipe) -> None:
    path = overfit_recipe("last", keep="last", max_steps=4)
    assert main(["train", str(path), "--no-eval"]) == 0
    run = RunDir(load_recipe(path).run_dir)
    kept = json.loads(run.kept.read_text())
    assert (kept["keep"], kept["step"]) == ("last", 4)
    assert kept["reason"] == "the last step: train.keep is 'last'"
    assert sorted(_validation(run)) == [2, 4]
    for key, value in _weights(run.checkpoints / "checkpoint-4").items():
        torch.testing.assert_close(_weights(run.adapter)[key], value, rtol=0, atol=0)


def _kill_after(path: Path, checkpoint: Path) -> None:
    """Start `ftkit train` in a process and SIGKILL it as soon as `checkpoint` is complete."""
    command = [sys.executable, "-m", "ftkit.cli", "train", str(path), "--no-eval"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=os.environ.copy())
    deadline = time.monotonic() + 300
    while not (checkpoint / "trainer_state.json").is_file():
        assert process.poll() is None, process.stderr.read().decode()[-2000:] if process.stderr else ""
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL


def test_kill_9_then_resume_keeps_the_same_step_and_adapter(overfit_recipe) -> None:
    """Best-so-far and early stopping's patience count survive a kill -9: the resumed run ends where the
    uninterrupted one does, with the same kept step, value and adapter."""
    settings = {"max_steps": 16, "save_every": 2, "early_stopping": {"patience": 3}}
    whole, killed = overfit_recipe("whole", **settings), overfit_recipe("killed", **settings)
    assert main(["train", str(whole), "--no-eval"]) == 0
    run = RunDir(load_recipe(killed).run_dir)
    _kill_after(killed, run.checkpoints / "checkpoint-6")
    assert not run.kept.exists() and not run.adapter.exists()
    assert main(["train", str(killed), "--resume", "--no-eval"]) == 0

    reference, resumed = RunDir(load_recipe(whole).run_dir), run
    expected, got = json.loads(reference.kept.read_text()), json.loads(resumed.kept.read_text())
    assert expected["step"] < 6, "the best step came before the kill"
    for key in ("keep", "step", "value", "checkpoint", "steps_trained", "early_stopped", "evaluations"):
        assert got[key] == expected[key], key
    for key, value in _weights(reference.adapter).items():
        torch.testing.assert_close(_weights(resumed.adapter)[key], value, rtol=1e-4, atol=1e-6)


class Observer(TrainerCallback):
    """What a sweep sees: each validation evaluation's step and metric, as it happens."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, float]] = []

    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.seen.append((state.global_step, kwargs["metrics"][selection.metric_key("macro_f1")]))


def test_a_callback_observes_each_validation_evaluation(overfit_recipe) -> None:
    recipe = load_recipe(
        overfit_recipe("observed", max_steps=4),
        ["eval.select_metric=macro_f1", "eval.during_training_examples=6"],
    )
    run = RunDir(recipe.run_dir)
    run.path.mkdir(parents=True)
    observer = Observer()
    prepared = prepare(recipe)
    result = train(recipe, run, prepared, callbacks=[observer])
    assert [step for step, _ in observer.seen] == [2, 4]
    assert result.kept.metric == "macro_f1"
    assert [(e["step"], e["value"]) for e in result.kept.evaluations or []] == observer.seen
    # The kept step's predictions made during training come back with the result (a sweep's CI is from them).
    assert result.kept_validation is not None
    examples, predictions = result.kept_validation
    assert len(examples) == len(predictions) == 6
    assert prepared.task.score(predictions, examples, only="macro_f1")["macro_f1"] == result.kept.value


def test_no_validation_split_keeps_the_last_step(write_recipe, sentiment_files) -> None:
    path = write_recipe("noval", data={"validation": None}, train={"max_steps": 2})
    assert main(["train", str(path), "--no-eval"]) == 0
    kept = json.loads(RunDir(load_recipe(path).run_dir).kept.read_text())
    assert (kept["keep"], kept["step"], kept["metric"]) == ("last", 2, None)
    assert "no validation split" in kept["reason"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["eval.select_metric=bleu"], "eval.select_metric 'bleu' is not a metric of task 'sentiment'"),
        (["data.validation=null", "train.keep=best"], "no validation split to choose by"),
        (["train.keep=last", "train.early_stopping.patience=2"], "train.early_stopping stops on the validation"),
        (["train.early_stopping.patience=0"], "train.early_stopping.patience"),
    ],
)
def test_bad_selection_settings_are_one_line_each(write_recipe, overrides: list[str], message: str) -> None:
    with pytest.raises(RecipeError) as raised:
        load_recipe(write_recipe("bad"), overrides)
    assert any(message in line for line in raised.value.problems), raised.value.problems

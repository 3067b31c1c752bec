"""`ftkit compare`: finished runs side by side, from hand-written metrics.json + recipe.yaml (no model)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from ftkit.cli import main
from ftkit.errors import FtkitError
from ftkit.evaluation.compare import CompareError, compare_runs

PREFIX = "ftkit: error: "


def interval(value: float, low: float, high: float) -> dict[str, float]:
    return {"value": value, "ci_low": low, "ci_high": high}


def write_run(
    folder: Path,
    *,
    task: str = "sentiment",
    split: str = "test",
    examples: int = 200,
    r: int = 16,
    quantization: str = "4bit",
    learning_rate: float = 3e-4,
    base: float = 0.75,
    adapter: float = 0.91,
    p_value: float = 9.43e-07,
    extra_metric: bool = False,
    training: dict[str, Any] | None = None,
    recipe: bool = True,
) -> Path:
    """A run directory as `ftkit train` leaves it, reduced to what `compare` reads."""
    folder.mkdir(parents=True)
    primary = "accuracy" if task == "sentiment" else "exact_match"
    systems: dict[str, dict[str, Any]] = {
        "base": {
            "metrics": {primary: interval(base, base - 0.06, base + 0.06)},
            "eval_seconds": 39.5,
            "examples_per_s": 5.1,
        },
        "adapter": {
            "metrics": {primary: interval(adapter, adapter - 0.04, adapter + 0.035)},
            "eval_seconds": 48.6,
            "examples_per_s": 4.1,
        },
    }
    comparisons = [
        {
            "system": "adapter",
            "baseline": "base",
            "metric": primary,
            "difference": adapter - base,
            "p_value": p_value,
            "test": "McNemar exact",
            "significant": p_value < 0.05,
        }
    ]
    if extra_metric:
        systems["base"]["metrics"]["macro_f1"] = interval(0.748, 0.690, 0.808)
        systems["adapter"]["metrics"]["macro_f1"] = interval(0.910, 0.870, 0.945)
        comparisons.append(
            {
                "system": "adapter",
                "baseline": "base",
                "metric": "macro_f1",
                "difference": 0.162,
                "p_value": 0.000999,
                "test": "paired bootstrap",
                "significant": True,
            }
        )
    metrics = {
        "schema": "ftkit.metrics/1",
        "task": task,
        "split": split,
        "examples": examples,
        "primary_metric": primary,
        "confidence": 0.95,
        "bootstrap_resamples": 1000,
        "systems": systems,
        "comparisons": comparisons,
        "training": {"steps": 50, "train_wall_s": 238.2, "peak_rss_mb": 4544} if training is None else training,
    }
    (folder / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    if recipe:
        resolved = {
            "name": folder.name,
            "model": {"source": "default", "quantization": quantization, "quant_type": "nf4"},
            "adapter": {"r": r, "alpha": 2 * r, "dropout": 0.05},
            "task": {"name": task},
            "train": {"epochs": 2.0, "max_steps": None, "learning_rate": learning_rate},
        }
        (folder / "recipe.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False), encoding="utf-8")
    return folder


def row(table: str, name: str) -> str:
    return next(line for line in table.splitlines() if line.split() and line.split()[0] == name)


def test_compare_two_ranks(tmp_path: Path) -> None:
    r8 = write_run(
        tmp_path / "runs" / "r8",
        r=8,
        adapter=0.86,
        p_value=0.0021,
        training={"train_wall_s": 201.0, "peak_rss_mb": 4400},
    )
    r16 = write_run(tmp_path / "runs" / "r16")
    table = compare_runs([r8, r16])
    header = table.splitlines()[1]
    for column in (
        "run",
        "quant",
        "r",
        "split",
        "examples",
        "base accuracy [95% CI]",
        "adapter accuracy [95% CI]",
        "difference",
        "p-value",
        "significant",
        "train s",
        "peak MB",
        "alpha",
    ):
        assert column in header, column
    assert "lr" not in header.split()  # same learning rate: not a distinguishing column
    assert row(table, "r8").split() == [
        "r8",
        "4bit",
        "8",
        "16",
        "test",
        "200",
        "0.750",
        "[0.690,",
        "0.810]",
        "0.860",
        "[0.820,",
        "0.895]",
        "+0.110",
        "0.0021",
        "yes",
        "201.0",
        "4400",
    ]
    assert (
        "0.910 [0.870, 0.945]" in row(table, "r16")
        and "+0.160" in row(table, "r16")
        and "9.43e-07" in row(table, "r16")
    )
    assert "238.2" in row(table, "r16") and "4544" in row(table, "r16")
    assert "warning" not in table


def test_compare_quantization_and_learning_rate_columns(tmp_path: Path) -> None:
    a = write_run(tmp_path / "qlora-4bit", quantization="4bit", learning_rate=3e-4)
    b = write_run(
        tmp_path / "lora-8bit", quantization="8bit", learning_rate=1e-4, p_value=0.2, adapter=0.77, training={}
    )
    table = compare_runs([a, b])
    assert " lr " in table.splitlines()[1]
    cells = row(table, "lora-8bit").split()
    assert cells[1] == "8bit" and "0.0001" in cells and cells[-3:] == ["no", "-", "-"]  # no training block: dashes
    assert row(table, "qlora-4bit").split()[1] == "4bit"


def test_compare_lists_other_metrics(tmp_path: Path) -> None:
    table = compare_runs([write_run(tmp_path / "a", extra_metric=True)])
    primary, _, others = table.partition("other metrics:")
    assert "macro_f1" not in primary
    line = next(line for line in others.splitlines() if "macro_f1" in line)
    assert "0.748 [0.690, 0.808]" in line and "0.910 [0.870, 0.945]" in line and "+0.162" in line and "0.000999" in line


def test_compare_warns_when_tasks_differ(tmp_path: Path) -> None:
    a = write_run(tmp_path / "sent")
    b = write_run(tmp_path / "qa", task="qa", split="validation", examples=100, base=0.3, adapter=0.6)
    table = compare_runs([a, b])
    warning = [line for line in table.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "not comparable" in warning[0]
    assert "sentiment/test" in warning[0] and "qa/validation" in warning[0]
    assert "accuracy" in row(table, "sent") and "exact_match" in row(table, "qa")  # a metric column per row
    assert "0.300 [0.240, 0.360]" in row(table, "qa")


def test_compare_warns_when_splits_differ(tmp_path: Path) -> None:
    table = compare_runs([write_run(tmp_path / "a"), write_run(tmp_path / "b", split="validation")])
    assert "not comparable" in table.splitlines()[-1]


def test_compare_same_names_use_longer_labels(tmp_path: Path) -> None:
    """`ftkit eval` writes RUN/eval/metrics.json; runs named eval/eval are told apart by their parent."""
    a = write_run(tmp_path / "r8" / "eval", recipe=False)
    b = write_run(tmp_path / "r16" / "eval", recipe=False)
    table = compare_runs([a, b])
    assert row(table, "r8/eval") and row(table, "r16/eval")
    assert row(table, "r8/eval").split()[1:3] == ["-", "-"]  # no recipe.yaml: settings unknown


def test_compare_reads_eval_subfolder(tmp_path: Path) -> None:
    run = tmp_path / "r8"
    write_run(run / "eval", recipe=False)
    (run / "recipe.yaml").write_text(
        yaml.safe_dump({"model": {"quantization": "8bit"}, "adapter": {"r": 8}}), encoding="utf-8"
    )
    assert row(compare_runs([run]), "r8").split()[1:3] == ["8bit", "8"]


def test_missing_metrics_json(tmp_path: Path) -> None:
    run = tmp_path / "r8"
    run.mkdir()
    with pytest.raises(CompareError, match=r"r8: no metrics\.json; run `ftkit train RECIPE`") as caught:
        compare_runs([run])
    assert isinstance(caught.value, FtkitError)


def test_trained_without_eval_suggests_ftkit_eval(tmp_path: Path) -> None:
    run = tmp_path / "r8"
    (run / "adapter").mkdir(parents=True)
    (run / "recipe.yaml").write_text("name: r8\n", encoding="utf-8")
    with pytest.raises(CompareError, match=rf"ftkit eval {run}/recipe.yaml --adapter {run}/adapter"):
        compare_runs([run])


def test_missing_directory(tmp_path: Path) -> None:
    write_run(tmp_path / "runs" / "sentiment-r8")
    with pytest.raises(
        CompareError, match=r"sentiment-r9: no such run directory \(did you mean .*sentiment-r8\?\).*ftkit train"
    ):
        compare_runs([tmp_path / "runs" / "sentiment-r9"])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[]", "expected a JSON object"),
        (json.dumps({"schema": "other/2"}), "schema 'other/2', expected 'ftkit.metrics/1'"),
        (json.dumps({"schema": "ftkit.metrics/1", "systems": {}}), "no 'base' system"),
        (
            json.dumps(
                {
                    "schema": "ftkit.metrics/1",
                    "primary_metric": "accuracy",
                    "systems": {"base": {"metrics": {"accuracy": interval(0.7, 0.6, 0.8)}}},
                }
            ),
            "no adapter",
        ),
    ],
)
def test_invalid_metrics_json(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.json").write_text(content, encoding="utf-8")
    with pytest.raises(CompareError, match=message) as caught:
        compare_runs([tmp_path / "run"])
    assert str(tmp_path / "run" / "metrics.json") in str(caught.value) and "ftkit eval" in str(caught.value)


# --- CLI ----------------------------------------------------------------------------------------


def test_cli_compare_prints_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = write_run(tmp_path / "r8", r=8), write_run(tmp_path / "r16")
    assert main(["compare", str(a), str(b)]) == 0
    out, err = capsys.readouterr()
    assert "adapter accuracy [95% CI]" in out and row(out, "r8") and row(out, "r16")
    assert err == ""


def test_cli_compare_missing_metrics_is_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write_run(tmp_path / "r16")
    (tmp_path / "r8").mkdir()
    assert main(["compare", str(good), str(tmp_path / "r8")]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(PREFIX) and "metrics.json" in lines[0] and "ftkit train" in lines[0]
    assert "Traceback" not in err


def test_cli_compare_help_teaches_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["compare", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "RUN_DIR" in out and "ftkit compare runs/r8 runs/r16" in out and "8-bit" in out and "%%" not in out


def test_cli_compare_needs_a_run(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["compare"])
    assert exit_.value.code == 2
    assert "RUN_DIR" in capsys.readouterr().err

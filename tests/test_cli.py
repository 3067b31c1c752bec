"""The `ftkit` command: help texts, exit codes, and that a user's mistake is a message, never a traceback.

Most tests call `ftkit.cli.main` in-process; three run `python -m ftkit.cli` as a real subprocess
so that what reaches a terminal is checked end to end. No test here loads a model: the run
directory is checked before any model is touched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ftkit import __version__
from ftkit.cli import main

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "recipes" / "sentiment-smollm2-qlora.yaml"
PREFIX = "ftkit: error: "
# What a user's shell passes (conftest's offline settings included), minus pytest's warning filters.
USER_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of `ftkit ARGV`, whether it returns or raises SystemExit."""
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(code: int, out: str, err: str) -> list[str]:
    """Exit 2, every stderr line an `ftkit: error:` line, no traceback; the messages without prefix."""
    assert code == 2, (code, out, err)
    lines = err.splitlines()
    assert lines, "no error message"
    assert all(line.startswith(PREFIX) for line in lines), err
    assert "Traceback" not in out + err
    return [line.removeprefix(PREFIX) for line in lines]


def write_recipe_text(folder: Path, extra: str = "", train: str = "train.jsonl") -> Path:
    """A recipe on tiny data files, running into FOLDER/run; EXTRA is appended from line 8 on.

    It uses the default model, which no test here loads: every test fails before a model is needed.
    """
    rows = [{"text": "great", "label": "positive"}, {"text": "awful", "label": "negative"}]
    for split in ("train", "test"):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    path = folder / "recipe.yaml"
    path.write_text(
        "task:\n"  # 1
        "  name: sentiment\n"  # 2
        "data:\n"  # 3
        f"  train: {train}\n"  # 4
        "  test: test.jsonl\n"  # 5
        "output:\n"  # 6
        f"  dir: {folder / 'run'}\n" + extra,  # 7
        encoding="utf-8",
    )
    return path


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    return write_recipe_text(tmp_path)


# --- help -------------------------------------------------------------------------------------


def test_main_help_lists_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["--help"], capsys)
    assert code == 0
    for word in ("validate", "train", "eval", "--debug", "--version", "FTKIT_HOME"):
        assert word in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["--version"], capsys)
    assert code == 0
    assert out.strip() == f"ftkit {__version__}"


def test_train_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["train", "--help"], capsys)
    assert code == 0
    for word in ("recipe", "KEY=VALUE", "--resume", "--overwrite", "--no-eval", "train.max_steps=20"):
        assert word in out


def test_eval_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["eval", "--help"], capsys)
    assert code == 0
    for word in ("KEY=VALUE", "--adapter", "--data", "--split", "--out", "validation"):
        assert word in out
    assert "95%" in out  # the %% escape in the description renders as a percent sign


def test_validate_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["validate", "--help"], capsys)
    assert code == 0
    for word in ("recipe", "KEY=VALUE", "--print"):
        assert word in out


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["train"],
        ["train", "r.yaml", "--resume", "--overwrite"],
        ["eval", "r.yaml", "--split", "dev"],
    ],
    ids=["no-command", "unknown-command", "no-recipe", "resume-and-overwrite", "bad-split"],
)
def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    code, out, err = run(argv, capsys)
    assert code == 2
    assert "usage: ftkit" in err
    assert "Traceback" not in out + err


# --- validate ---------------------------------------------------------------------------------


def test_validate_shipped_recipe(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["validate", str(SHIPPED)], capsys)
    assert code == 0, err
    assert "ok" in out
    assert f"{SHIPPED}: ok (task sentiment" in out
    assert err == ""


def test_validate_print_shows_resolved_recipe_with_overrides(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["validate", str(SHIPPED), "train.max_steps=20", "adapter.r=8", "--print"], capsys)
    assert code == 0, err
    resolved, _, status = out.rpartition(f"{SHIPPED}: ok")
    printed = yaml.safe_load(resolved)
    assert printed["train"]["max_steps"] == 20
    assert printed["adapter"]["r"] == 8
    assert Path(printed["data"]["train"]).is_absolute()
    assert "run dir runs/sentiment-smollm2-qlora" in status


# --- bad recipes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command, extra, train, expected",
    [
        ("validate", "adapter:\n  rr: 8\n", "train.jsonl", ":9: unknown key 'adapter.rr' (did you mean 'r'?)"),
        (
            "validate",
            "train:\n  batch_size: eight\n",
            "train.jsonl",
            ":9: train.batch_size: Input should be a valid integer",
        ),
        ("validate", "", "missing.jsonl", ":4: data.train: file not found: "),
        ("train", "trian:\n  max_steps: 1\n", "train.jsonl", ":8: unknown key 'trian' (did you mean 'train'?)"),
        ("eval", "train:\n  batch_size: eight\n", "train.jsonl", ":9: train.batch_size: "),
    ],
    ids=["typo", "type", "missing-data", "train-typo", "eval-type"],
)
def test_bad_recipe_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str, extra: str, train: str, expected: str
) -> None:
    path = write_recipe_text(tmp_path, extra, train)
    code, out, err = run([command, str(path)], capsys)
    [message] = assert_user_error(code, out, err)
    assert message.startswith(f"{path}{expected}")
    if train == "missing.jsonl":
        assert str(tmp_path.resolve() / "missing.jsonl") in message
    assert not (tmp_path / "run").exists()


def test_several_problems_each_on_its_own_error_line(recipe: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        ["validate", str(recipe), "adapter.r=0", "adapter.dropout=1.5", "model.quantization=2bit"], capsys
    )
    messages = assert_user_error(code, out, err)
    assert len(messages) == 3
    assert {m.split(":")[0] for m in messages} == {
        "override 'adapter.r=0'",
        "override 'adapter.dropout=1.5'",
        "override 'model.quantization=2bit'",
    }


def test_missing_recipe_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["validate", str(tmp_path / "nope.yaml")], capsys)
    assert assert_user_error(code, out, err) == [f"{tmp_path / 'nope.yaml'}: recipe file not found"]


def test_override_without_equals(recipe: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["validate", str(recipe), "train.max_steps"], capsys)
    [message] = assert_user_error(code, out, err)
    assert "override 'train.max_steps': expected KEY=VALUE" in message


def test_subprocess_bad_recipe_prints_no_traceback(recipe: Path) -> None:
    """End to end through `python -m ftkit.cli`, as a user's terminal sees it."""
    recipe = write_recipe_text(recipe.parent, "adapter:\n  rr: 8\ntrian: {}\n", train="missing.jsonl")
    done = subprocess.run(
        [sys.executable, "-m", "ftkit.cli", "validate", str(recipe), "train.batch_size=eight"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=recipe.parent,
        env=USER_ENV,
    )
    messages = assert_user_error(done.returncode, done.stdout, done.stderr)
    assert done.stdout == ""
    assert len(messages) == 4, messages
    joined = "\n".join(messages)
    assert "unknown key 'adapter.rr' (did you mean 'r'?)" in joined
    assert "unknown key 'trian' (did you mean 'train'?)" in joined
    assert "data.train: file not found" in joined
    assert "override 'train.batch_size=eight': train.batch_size" in joined


def test_subprocess_validate_ok() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ftkit.cli", "validate", str(SHIPPED)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert ": ok (" in done.stdout


# --- run directories --------------------------------------------------------------------------


def test_train_refuses_existing_run_dir_without_overwrite(recipe: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = recipe.parent / "run"
    run_dir.mkdir()
    precious = run_dir / "adapter_model.safetensors"
    precious.write_bytes(b"earlier run's weights")
    code, out, err = run(["train", str(recipe)], capsys)
    [message] = assert_user_error(code, out, err)
    assert str(run_dir) in message
    assert "--overwrite" in message and "--resume" in message
    assert precious.read_bytes() == b"earlier run's weights"
    assert sorted(p.name for p in run_dir.iterdir()) == ["adapter_model.safetensors"]


def test_resume_without_checkpoint(recipe: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = recipe.parent / "run"
    (run_dir / "checkpoints" / "checkpoint-2").mkdir(parents=True)  # incomplete: no trainer_state.json
    (run_dir / "train_log.jsonl").write_text('{"step": 1}\n')
    code, out, err = run(["train", str(recipe), "--resume"], capsys)
    [message] = assert_user_error(code, out, err)
    assert str(run_dir) in message
    assert "no complete checkpoint" in message and "without --resume" in message
    assert (run_dir / "train_log.jsonl").read_text() == '{"step": 1}\n'


def test_resume_with_no_run_dir(recipe: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["train", str(recipe), "--resume"], capsys)
    [message] = assert_user_error(code, out, err)
    assert "no complete checkpoint" in message
    assert not (recipe.parent / "run").exists()


def test_subprocess_train_on_existing_run_dir_stops_before_loading_anything(recipe: Path) -> None:
    """The run-directory check comes before any model load, and reaches the terminal as one line."""
    run_dir = recipe.parent / "run"
    run_dir.mkdir()
    (run_dir / "report.md").write_text("earlier report\n")
    done = subprocess.run(
        [sys.executable, "-m", "ftkit.cli", "train", str(recipe), "train.max_steps=20"],
        capture_output=True,
        text=True,
        timeout=120,
        env=USER_ENV,
    )
    [message] = assert_user_error(done.returncode, done.stdout, done.stderr)
    assert "--overwrite" in message
    assert done.stdout == ""
    assert (run_dir / "report.md").read_text() == "earlier report\n"
    assert [p.name for p in run_dir.iterdir()] == ["report.md"]

"""The runs catalog and the examples reader on small folders: what counts as a run, nesting, states, the
tail of a log, and fixed / broken as report.md decides them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ftkit.cli import main
from ftkit.runs import RunDir, locked
from ftkit.ui.catalog import Catalog, find_runs, state_of, tail_rows
from ftkit.ui.examples import kind_of, page


def run_dir(path: Path, *extra: str) -> Path:
    path.mkdir(parents=True)
    (path / "recipe.yaml").write_text("name: x\n")
    for name in extra:
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text("{}")
    return path


def test_runs_are_found_at_any_depth_but_not_inside_a_run(tmp_path: Path) -> None:
    run_dir(tmp_path / "a")
    run_dir(tmp_path / "sweeps/lr/trials/000")
    run_dir(tmp_path / "a/eval/inner")  # inside a run's own folder: not a run of its own
    run_dir(tmp_path / ".hidden/b")
    (tmp_path / "linked").symlink_to(tmp_path / "a")
    found = [p.relative_to(tmp_path).as_posix() for p in find_runs(tmp_path)]
    assert found == ["a", "sweeps/lr/trials/000"]


def test_states_from_the_lock_the_adapter_and_the_exit_code(tmp_path: Path) -> None:
    run = RunDir(run_dir(tmp_path / "r"))
    assert state_of(run, {}) == "failed"  # nothing to resume from
    assert not (tmp_path / ".r.lock").exists(), "looking at a run must not create its lock file"
    (run.checkpoints / "checkpoint-2").mkdir(parents=True)
    (run.checkpoints / "checkpoint-2" / "trainer_state.json").write_text("{}")
    assert state_of(run, {}) == "interrupted"
    assert state_of(run, {str(run.path): 1}) == "failed"  # the launcher saw it fail
    assert state_of(run, {str(run.path): None}) == "running"  # launched, not yet holding its lock
    with locked(run):
        assert state_of(run, {}) == "running"
    run.adapter.mkdir()
    (run.adapter / "manifest.json").write_text("{}")
    assert state_of(run, {}) == "finished"


def test_a_summary_is_recomputed_when_its_files_change(tmp_path: Path) -> None:
    run = run_dir(tmp_path / "r")
    catalog = Catalog(tmp_path)
    assert catalog.runs()[0].steps is None
    (run / "train_log.jsonl").write_text('{"step": 3, "loss": 1.0}\n')
    assert catalog.runs()[0].steps == 3


def test_tail_rows_reads_only_the_end_and_drops_the_cut_line(tmp_path: Path) -> None:
    log = tmp_path / "train_log.jsonl"
    log.write_text("".join(json.dumps({"step": i, "pad": "x" * 50}) + "\n" for i in range(1000)) + '{"step": 10')
    rows = tail_rows(log, limit=1000)
    assert rows[-1]["step"] == 999 and len(rows) < 20 and all("pad" in r for r in rows)


@pytest.mark.parametrize(
    ("base", "adapter", "kind"),
    [
        (0.0, 1.0, "fixed"),
        (1.0, 0.0, "broken"),
        (1.0, 1.0, "both right"),
        (0.0, 0.0, "both wrong"),
        (0.4, 0.4, "both wrong"),
    ],
)
def test_kind_of(base: float, adapter: float, kind: str) -> None:
    assert kind_of(base, adapter) == kind


def test_examples_without_scores_are_listed_unclassified(tmp_path: Path) -> None:
    old = tmp_path / "predictions.jsonl"
    old.write_text(json.dumps({"where": "f:row 1", "input": "x", "reference": "a", "base": "a", "adapter": "b"}) + "\n")
    result = page(old, kind=None, query="", number=0)
    assert not result.scored and result.matched == 1 and result.rows[0].kind is None
    assert result.systems == ["base", "adapter"]


def test_ui_on_a_missing_folder_is_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ui", "--runs", str(tmp_path / "nope"), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such folder" in err


def test_ui_help_teaches(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["ui", "--help"])
    out = capsys.readouterr().out
    assert "--runs" in out and "127.0.0.1" in out and "FTKIT_UI_TOKEN" in out


def test_a_chat_example_shows_its_whole_conversation_escaped(tmp_path: Path) -> None:
    from ftkit.ui.catalog import RunSummary
    from ftkit.ui.pages import examples_page

    turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "<b>Hi</b>"}]
    row = {
        "where": "f:row 1",
        "input": turns,
        "reference": "Hello",
        "base": {"reply": "Yo"},
        "adapter": {"reply": "Hi"},
    }
    (tmp_path / "predictions.jsonl").write_text(json.dumps(row | {"scores": {"base": 0.2, "adapter": 0.9}}) + "\n")
    result = page(tmp_path / "predictions.jsonl", kind="fixed", query="hi", number=0)
    html = examples_page(RunSummary(rel="r", state="finished", name="r"), result, "fixed", "hi", 0, "t")
    assert '<div class="turn system"><b>system</b> Be brief.</div>' in html
    assert "&lt;b&gt;Hi&lt;/b&gt;" in html and "<b>Hi</b>" not in html
    assert result.counts["fixed"] == 1 and "&quot;reply&quot;: &quot;Hi&quot;" in html  # a prediction object as JSON

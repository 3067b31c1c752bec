"""The end of a sweep: the winner and the runner-up on the test split, once, beside the base model.

This is the first time the sweep reads the test split: the search chose on validation only. The test
comparison has each system's metrics with bootstrap CIs, each trial against the base with its task's paired
test, and the winner against the runner-up with the same paired test: a winner that is not significantly
better than the runner-up on test is reported as such, not crowned.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optuna.trial import FrozenTrial

from ftkit import runs
from ftkit.data.prepared import prepare
from ftkit.evaluation import evaluator, reports, sample
from ftkit.evaluation.evaluator import Comparison, EvalReport
from ftkit.evaluation.workflow import evaluate_on_one_base
from ftkit.recipe import load_recipe


@dataclass
class FinalTest:
    report: EvalReport
    labels: list[str]  # the display names of the winner (first) and runner-up in the report
    head_to_head: Comparison | None  # winner minus runner-up on the primary metric; None with one trial
    written: list[Path]

    def verdict(self) -> str:
        """One sentence a user can act on."""
        if self.head_to_head is None:
            return f"{self.labels[0]} is the only finished trial; there is no runner-up to compare with"
        c = self.head_to_head
        if c.significant and c.improved:
            return (
                f"{self.labels[0]} beats {self.labels[1]} on test {c.metric} by {c.difference:+.4f} "
                f"({c.test}, p = {c.p_value:.3g}): the winner is better"
            )
        return (
            f"{self.labels[0]} is not significantly better than {self.labels[1]} on test {c.metric} "
            f"({c.difference:+.4f}, {c.test}, p = {c.p_value:.3g}): the search found no clear winner; "
            "either is a sound choice, the cheaper one (smaller r, fewer steps) is the sensible default"
        )


def test_best(
    recipe_path: Path, recipe_overrides: list[str], ranked: list[FrozenTrial], metric: str, out: Path
) -> FinalTest:
    """Evaluate the first two of `ranked` (best first) on the recipe's test split, and write the reports to `out`;
    the head-to-head test is on `metric`, the one the search chose by."""
    recipe = load_recipe(recipe_path, recipe_overrides)
    # Now with the test split, and its overlap with train checked; validation was checked when the sweep began.
    prepared = prepare(recipe, held_out=("test",))
    prepared.raise_if_fatal()
    task = prepared.task
    drawn, notes = sample.held_out(
        task, prepared.splits["train"].examples, prepared.splits["test"].examples, recipe, "test"
    )
    chosen = ranked[:2]
    labels = [f"trial {t.number} ({role})" for t, role in zip(chosen, ("winner", "runner-up"))]
    folders = [runs.RunDir(Path(t.user_attrs["run_dir"])).adapter for t in chosen]
    report = evaluate_on_one_base(recipe, task, drawn, notes, folders, "test", labels)
    head = _head_to_head(task, report, metric) if len(chosen) == 2 else None
    written = reports.write_reports(report, out)
    return FinalTest(report, labels, head, written)


def _head_to_head(task: Any, report: EvalReport, metric: str) -> Comparison:
    """The winner against the runner-up (as the base of the comparison)."""
    _, winner, runner_up = report.systems
    return evaluator.compare(task, runner_up, winner, metric, report.examples, report.resamples)

"""The path of `ftkit eval`: the recipe's base model and any adapters, on a held-out split or any file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ftkit import runs, tracking
from ftkit.data.prepared import ready_task
from ftkit.data.splits import load_split
from ftkit.errors import FtkitError
from ftkit.evaluation import evaluator, reports, sample
from ftkit.evaluation.evaluator import EvalReport
from ftkit.evaluation.sample import Sample
from ftkit.models import load_model
from ftkit.recipe import Recipe, load_recipe
from ftkit.tasks import Task
from ftkit.training import adapters


def evaluate_adapters(
    recipe_path: Path,
    overrides: list[str],
    *,
    adapters: list[Path],
    split: str | None,
    data: Path | None,
    out: Path | None,
    report_to: list[str] | None = None,
) -> int:
    """`ftkit eval`; with `report_to`, the metrics and reports are logged to the training run's trackers too
    (the run the only adapter was trained in, else the recipe's)."""
    recipe = load_recipe(recipe_path, overrides)
    run = runs.RunDir(recipe.run_dir)
    tracked = (runs.run_of(adapters[0].resolve()) if len(adapters) == 1 else None) or run
    with tracking.reopen(tracked, report_to or [], "--report-to") as trackers:
        return _evaluate(recipe, adapters, split, data, out or run.eval.path, run, trackers)


def _evaluate(
    recipe: Recipe,
    adapters: list[Path],
    split: str | None,
    data: Path | None,
    out: Path,
    run: runs.RunDir,
    trackers: tracking.Session,
) -> int:
    split = split or recipe.eval.split
    if data is not None and not data.is_file():
        raise FtkitError(f"--data {data}: file not found")
    task = ready_task(recipe)
    examples = load_split(recipe, task, split, path=data).examples
    # Labelled tasks compare the held-out labels with the training data's (a label it never had is a warning);
    # not for --data, whose column mapping (overrides) need not fit the training file.
    labelled = data is None and task.label_of(examples[0]) is not None
    train = load_split(recipe, task, "train").examples if labelled else []
    drawn, notes = sample.held_out(task, train, examples, recipe, data.name if data else split)
    report = evaluate_on_one_base(recipe, task, drawn, notes, adapters, data.name if data else split)
    written = reports.write_reports(report, out, train_log=run.train_log if run.train_log.is_file() else None)
    trackers.log_evaluation(reports.to_json(report), written, 0, under="eval")
    print(reports.render_table(report))
    print("reports: " + ", ".join(str(path) for path in written))
    return 0


def evaluate_on_one_base(
    recipe: Recipe,
    task: Task,
    drawn: Sample,
    notes: list[str],
    folders: list[Path],
    split: str,
    labels: list[str] | None = None,
) -> EvalReport:
    """Load the recipe's base once, stack the adapters on it and evaluate the base and each on the drawn examples;
    the adapters are shown by `labels`, or by their folders (see `stack_adapters`)."""
    loaded = load_model(recipe.model)
    model, names = stack_adapters(loaded.model, loaded.tokenizer, folders)
    if labels is not None:
        names = dict(zip(labels, names.values()))
    return evaluator.evaluate(
        task, model, loaded.tokenizer, drawn.examples, names, recipe.eval, split=split, sample=drawn, warnings=notes
    )


def stack_adapters(model: Any, tokenizer: Any, folders: list[Path]) -> tuple[Any, dict[str, str]]:
    """Load every adapter onto one base model (switched per system), named by its folder."""
    names: dict[str, str] = {}
    for i, folder in enumerate(folders):
        names[_label(folder, names)] = f"a{i}"
        model = adapters.load(model, folder, name=f"a{i}", tokenizer=tokenizer)
    return model, names


def _label(folder: Path, taken: dict[str, str]) -> str:
    """A readable name for an adapter: its run's name when it sits in runs/<name>/adapter."""
    label = runs.adapter_name(folder)
    return label if label not in taken else f"{label}-{len(taken)}"

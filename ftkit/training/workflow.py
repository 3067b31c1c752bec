"""The paths a command takes through the rooms: recipe -> run dir -> train -> evaluate -> reports.

Kept apart from `cli.py` so the CLI only parses arguments, and apart from `train.py` and
`evaluation.py` so neither needs to know about the other.
"""

from __future__ import annotations

import json
import resource
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from ftkit import lineage, runs
from ftkit.training import adapters
from ftkit.training import distributed
from ftkit.evaluation import evaluator as evaluation
from ftkit.data.sources import load_split
from ftkit.errors import FtkitError
from ftkit.models import load_model
from ftkit.recipe import Recipe, load_recipe
from ftkit.tasks import get_task


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _check_resume_matches(recipe: Recipe, run: runs.RunDir) -> None:
    """A resumed run must continue the same training, or its checkpoints mean something else."""
    if not run.recipe.is_file():
        return
    import yaml

    saved = yaml.safe_load(run.recipe.read_text(encoding="utf-8"))
    current = recipe.model_dump(mode="json")
    changed = [key for key in ("model", "adapter", "task", "data", "train") if saved.get(key) != current.get(key)]
    if changed:
        raise FtkitError(
            f"--resume: the recipe's {', '.join(changed)} section(s) differ from {run.recipe}; "
            "resume with the same settings, or start a new run with --overwrite"
        )


def _check_same_processes(recipe: Recipe, run: runs.RunDir, processes: int) -> None:
    """A resumed run must keep its effective batch: the checkpoints' step count and schedule assume it."""
    if not run.launch.is_file():
        return
    saved = json.loads(run.launch.read_text(encoding="utf-8"))
    now = distributed.batch_summary(recipe.train.batch_size, processes, recipe.train.grad_accum)
    if saved.get("effective_batch") != now["effective_batch"]:
        raise FtkitError(
            f"--resume: {run.launch} records {saved.get('processes')} process(es) and an effective batch of "
            f"{saved.get('effective_batch')} examples, this launch {processes} and {now['effective_batch']}; "
            f"resume with {saved.get('processes')} process(es), or start a new run with --overwrite"
        )


def _train_beside_main(recipe: Recipe, resume: bool) -> int:
    """A non-main process: wait until the main one has prepared the run directory, train, and stop
    (at once, with exit code 0, when the main process refused: it reports the error and the exit code).

    It writes nothing (the Trainer, the log and the adapter write from the main process only) and does
    not evaluate: evaluation is not data-parallel, the main process does it alone after training.
    """
    from ftkit.training.trainer import train

    if distributed.wait_for_main():
        train(recipe, runs.RunDir(recipe.run_dir), resume=resume)
    return 0


def train_and_evaluate(recipe_path: Path, overrides: list[str], *, overwrite: bool, resume: bool, evaluate: bool) -> int:
    """Train, then evaluate; in one process, or in each process a launcher (torchrun, accelerate) started.

    Only the main process locks the run, checks it, (re)creates the run directory and writes into it; the
    lock is per process, so the others must not take it. They wait in `distributed.wait_for_main`.
    """
    from ftkit.data.preflight import check_recipe
    from ftkit.training.trainer import train

    recipe = load_recipe(recipe_path, overrides)
    processes = distributed.start()
    if not distributed.is_main_process():
        return _train_beside_main(recipe, resume)
    with ExitStack() as held:
        with distributed.main_prepares():
            held.enter_context(runs.locked(runs.RunDir(recipe.run_dir)))
            # Everything that can fail on bad input fails before the run directory is created or replaced.
            runs.check_target(recipe.run_dir, overwrite=overwrite, resume=resume)
            if resume:
                _check_resume_matches(recipe, runs.RunDir(recipe.run_dir))
                _check_same_processes(recipe, runs.RunDir(recipe.run_dir), processes)
            checks = check_recipe(recipe)
            checks.raise_if_fatal()
            run = runs.prepare(recipe.run_dir, overwrite=overwrite, resume=resume)
            runs.write_text(run.recipe, recipe.to_yaml())
        print(f"run directory: {run.path}", file=sys.stderr)
        result = train(recipe, run, resume=resume, checks=checks)
        summary = {
            "steps": result.steps,
            "train_loss": round(result.train_loss, 4),
            "train_examples": result.train_examples,
            "truncated_examples": result.truncated,
            "tokens_per_s": round(result.tokens_per_s, 1),
            "train_wall_s": round(result.wall_s, 1),
            "peak_rss_mb": round(peak_rss_mb()),
            "lora_mean_abs_change": result.lora_change,
            **result.batch,
        }
        print(
            f"trained {summary['steps']} steps in {summary['train_wall_s']} s: final loss {summary['train_loss']}, "
            f"{summary['tokens_per_s']} tokens/s, peak memory {summary['peak_rss_mb']} MB; adapter -> {run.adapter}"
        )
        if not evaluate:
            return 0
        if distributed.shards_parameters():
            print(f"evaluation skipped: FSDP/ZeRO-3 sharded the model across processes; evaluate the adapter with "
                  f"`ftkit eval {recipe_path} --adapter {run.adapter}`", file=sys.stderr)
            return 0
        examples = result.checks.splits[recipe.eval.split].examples[: recipe.eval.max_examples]
        report = evaluation.evaluate(
            result.checks.task, result.model, result.tokenizer, examples, {"adapter": "default"}, recipe.eval, split=recipe.eval.split
        )
        report.training = summary | {"peak_rss_mb": round(peak_rss_mb())}
        written = evaluation.write_reports(report, run.path, train_log=run.train_log)
        lineage.add_eval_summary(run.adapter, evaluation.to_json(report))
        print(evaluation.render_table(report))
        print("reports: " + ", ".join(str(path) for path in written))
    return 0


def train_in_processes(nproc: int, recipe_path: Path, overrides: list[str], ftkit_args: list[str], *,
                       overwrite: bool, resume: bool) -> int:
    """`ftkit train --nproc N`: refuse what can be refused cheaply here, then hand off to a launcher.

    A bad recipe or an existing run directory fails with one line before any process starts; everything
    else (pre-flight, the lock) happens in the launched processes, as under a launcher the user started.
    """
    import shlex

    import torch

    if distributed.world_size() > 1:
        raise distributed.DistributedError(
            "--nproc starts processes; this one was already started by a launcher, leave --nproc out"
        )
    recipe = load_recipe(recipe_path, overrides)
    runs.check_target(recipe.run_dir, overwrite=overwrite, resume=resume)
    command = distributed.launcher_command(nproc, ftkit_args, gpus=torch.cuda.device_count())
    print(f"starting {nproc} processes: {shlex.join(command)}", file=sys.stderr)
    return distributed.run_launcher(command, nproc)


def _eval_examples(recipe: Recipe, task: Any, split: str, data: Path | None) -> list[Any]:
    if task.needs_training_data():
        task.observe(load_split(recipe, task, "train").examples)
    return load_split(recipe, task, split, path=data).examples[: recipe.eval.max_examples]


def evaluate_adapters(
    recipe_path: Path, overrides: list[str], *, adapters: list[Path], split: str | None, data: Path | None, out: Path | None
) -> int:
    recipe = load_recipe(recipe_path, overrides)
    split = split or recipe.eval.split
    task = get_task(recipe.task, recipe.data.max_length)
    if data is not None and not data.is_file():
        raise FtkitError(f"--data {data}: file not found")
    examples = _eval_examples(recipe, task, split, data)
    loaded = load_model(recipe.model)
    model, names = _stack_adapters(loaded.model, loaded.tokenizer, adapters)
    report = evaluation.evaluate(task, model, loaded.tokenizer, examples, names, recipe.eval, split=data.name if data else split)
    out = out or recipe.run_dir / "eval"
    train_log = recipe.run_dir / "train_log.jsonl"
    written = evaluation.write_reports(report, out, train_log=train_log if train_log.is_file() else None)
    print(evaluation.render_table(report))
    print("reports: " + ", ".join(str(path) for path in written))
    return 0


def _stack_adapters(model: Any, tokenizer: Any, folders: list[Path]) -> tuple[Any, dict[str, str]]:
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


def inspect_data(recipe_path: Path, overrides: list[str]) -> int:
    """`ftkit data`: the pre-flight report; exit 2 when training would refuse to start."""
    from ftkit.data.preflight import check_recipe, render_report

    recipe = load_recipe(recipe_path, overrides)
    result = check_recipe(recipe)
    print(render_report(recipe, result))
    result.raise_if_fatal()
    return 0

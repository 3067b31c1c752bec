"""The path of `ftkit train`: recipe -> lock -> prepared data -> run dir -> train -> evaluate -> reports.

Kept apart from `cli.py` so the CLI only parses arguments, and apart from `trainer.py` and
`ftkit.evaluation` so neither needs to know about the other. The prepared data is built once here
and passed down; the run directory is one `RunDir` for the whole command.
"""

from __future__ import annotations

import json
import resource
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from ftkit import lineage, runs, tracking
from ftkit.data.prepared import prepare
from ftkit.errors import FtkitError
from ftkit.evaluation import evaluator, reports, sample
from ftkit.recipe import Recipe, load_recipe
from ftkit.training import distributed
from ftkit.training.trainer import TrainResult, train


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
    if distributed.wait_for_main():
        train(recipe, runs.RunDir(recipe.run_dir), prepare(recipe), resume=resume)
    return 0


def train_and_evaluate(
    recipe_path: Path, overrides: list[str], *, overwrite: bool, resume: bool, evaluate: bool
) -> int:
    """Train, then evaluate; in one process, or in each process a launcher (torchrun, accelerate) started.

    Only the main process locks the run, checks it, (re)creates the run directory and writes into it; the
    lock is per process, so the others must not take it. They wait in `distributed.wait_for_main`.
    """
    recipe = load_recipe(recipe_path, overrides)
    processes = distributed.start()
    if not distributed.is_main_process():
        return _train_beside_main(recipe, resume)
    run = runs.RunDir(recipe.run_dir)
    with ExitStack() as held:
        with distributed.main_prepares():
            held.enter_context(runs.locked(run))
            # Everything that can fail on bad input fails before the run directory is created or replaced.
            runs.check_target(run, overwrite=overwrite, resume=resume)
            if resume:
                _check_resume_matches(recipe, run)
                _check_same_processes(recipe, run, processes)
            tracking.check(recipe.train.report_to)
            prepared = prepare(recipe)
            prepared.raise_if_fatal()
            runs.prepare(run, overwrite=overwrite, resume=resume)
            runs.write_text(run.recipe, recipe.to_yaml())
        print(f"run directory: {run.path}", file=sys.stderr)
        trackers = held.enter_context(tracking.session(run, recipe.train.report_to))
        trackers.log_recipe(recipe)
        result = train(recipe, run, prepared, resume=resume, callbacks=trackers.callbacks())
        summary = training_summary(result)
        trackers.log_training(summary, run.adapter)
        print(
            f"trained {summary['steps']} steps in {summary['train_wall_s']} s: final loss {summary['train_loss']}, "
            f"{summary['tokens_per_s']} tokens/s, peak memory {summary['peak_rss_mb']} MB; adapter -> {run.adapter}"
        )
        print(f"kept the adapter of step {result.kept.step}: {result.kept.reason} ({run.kept})")
        if not evaluate or distributed.shards_parameters():
            trackers.log_adapter(run.adapter)
        if not evaluate:
            return 0
        if distributed.shards_parameters():
            print(
                f"evaluation skipped: FSDP/ZeRO-3 sharded the model across processes; evaluate the adapter with "
                f"`ftkit eval {recipe_path} --adapter {run.adapter}`",
                file=sys.stderr,
            )
            return 0
        drawn, notes = sample.held_out(
            prepared.task, prepared.splits["train"].examples, prepared.splits[recipe.eval.split].examples, recipe
        )
        report = evaluator.evaluate(
            prepared.task,
            result.model,
            result.tokenizer,
            drawn.examples,
            {"adapter": "default"},
            recipe.eval,
            split=recipe.eval.split,
            sample=drawn,
            warnings=notes,
        )
        report.training = summary | {"peak_rss_mb": round(peak_rss_mb())}
        written = reports.write_reports(report, run.path, train_log=run.train_log)
        lineage.add_eval_summary(run.adapter, reports.to_json(report))
        trackers.log_evaluation(reports.to_json(report), written, result.steps)
        trackers.log_adapter(run.adapter)
        print(reports.render_table(report))
        print("reports: " + ", ".join(str(path) for path in written))
    return 0


def training_summary(result: TrainResult) -> dict[str, Any]:
    """What metrics.json and report.md record about training."""
    return {
        "steps": result.steps,
        "train_loss": round(result.train_loss, 4),
        "train_examples": result.train_examples,
        "truncated_examples": result.truncated,
        "tokens_per_s": round(result.tokens_per_s, 1),
        "train_wall_s": round(result.wall_s, 1),
        "peak_rss_mb": round(peak_rss_mb()),
        "lora_mean_abs_change": result.lora_change,
        **result.batch,
        "kept_step": result.kept.step,
        "kept_because": result.kept.reason,
    }


def train_in_processes(
    nproc: int, recipe_path: Path, overrides: list[str], ftkit_args: list[str], *, overwrite: bool, resume: bool
) -> int:
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
    runs.check_target(runs.RunDir(recipe.run_dir), overwrite=overwrite, resume=resume)
    command = distributed.launcher_command(nproc, ftkit_args, gpus=torch.cuda.device_count())
    print(f"starting {nproc} processes: {shlex.join(command)}", file=sys.stderr)
    return distributed.run_launcher(command, nproc)

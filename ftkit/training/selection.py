"""Which adapter a run keeps: the task's own metric on the validation split during training, the best step
by it, early stopping on it, and the record of what was kept and why.

The Trainer does the bookkeeping: `metric_for_best_model` tracks the best value, step and checkpoint in
its state (so they survive `--resume`), checkpoint rotation never deletes the best checkpoint, and
`EarlyStoppingCallback` counts evaluations without improvement (its counter is saved in every checkpoint).
What it lacks, ftkit adds here: the metric itself (the task predicts on the validation examples; the
Trainer only knows losses and logits), a checkpoint at every evaluation (`load_best_model_at_end`
insists that `save_every` be a multiple of `eval_every` and would otherwise lose the best step), an
evaluation at the last step, and loading the best checkpoint's adapter weights into the model in
memory, so that the saved adapter and the held-out evaluation are the kept one.

A caller observes each validation evaluation with a `TrainerCallback` passed to `trainer.train`: its
`on_evaluate` gets `metrics[metric_key(plan.metric)]` (the sweep prunes from it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from safetensors.torch import load_file
from transformers import EarlyStoppingCallback, TrainerCallback

from ftkit.errors import FtkitError
from ftkit.evaluation.evaluator import predict_system
from ftkit.evaluation.sample import draw
from ftkit.recipe import Recipe
from ftkit.tasks import Example, Task

ADAPTER_WEIGHTS = "adapter_model.safetensors"  # peft's file name, in every Trainer checkpoint of a LoRA run


def metric_key(metric: str) -> str:
    """The key of the in-training validation metric in the Trainer's logs and `on_evaluate` metrics."""
    return f"eval_{metric}"


@dataclass(frozen=True)
class Plan:
    """What a run computes during training and how it chooses its adapter, resolved from the recipe."""

    keep: Literal["best", "last"]
    metric: str | None  # None: no validation split, no metric during training
    greater_is_better: bool
    why_last: str = ""  # when keep is 'last': why

    @property
    def key(self) -> str | None:
        return metric_key(self.metric) if self.metric else None


def select_metric(recipe: Recipe, task: Task) -> str:
    """The validation metric a run keeps its adapter by and a sweep chooses by: eval.select_metric, else the
    task's primary metric."""
    return recipe.eval.select_metric or task.metrics[0]


def plan(recipe: Recipe, task: Task, has_validation: bool, sharded: bool) -> Plan:
    """`train.keep: auto` is best when there is a validation split. Under FSDP/ZeRO-3 no process holds the whole
    adapter to load the best checkpoint into, so auto means last there (an explicit 'best' is refused)."""
    if not has_validation:
        return Plan("last", None, True, "there is no validation split")
    metric = select_metric(recipe, task)
    greater = metric not in task.lower_is_better
    if recipe.train.keep == "last":
        return Plan("last", metric, greater, "train.keep is 'last'")
    if sharded:
        if recipe.train.keep == "best" or recipe.train.early_stopping is not None:
            raise FtkitError(
                "train.keep: best and train.early_stopping need the whole adapter in one process; FSDP/ZeRO-3 "
                "shard it. Set train.keep: last, or train with DDP (recipes/accelerate/ddp.yaml)"
            )
        return Plan("last", metric, greater, "FSDP/ZeRO-3 shard the adapter (train.keep auto)")
    return Plan("best", metric, greater)


class ValidationMetric:
    """The task's metric on (a seeded sample of) the validation split, as the held-out evaluation computes it."""

    def __init__(self, recipe: Recipe, task: Task, tokenizer: Any, examples: Sequence[Example], metric: str) -> None:
        self.task, self.tokenizer, self.metric = task, tokenizer, metric
        self.examples = draw(task, examples, recipe.eval.during_training_examples, recipe.eval.seed).examples
        self.batch_size = recipe.eval.batch_size
        self.predictions: dict[int, list[Any]] = {}  # by step: the Trainer's best evaluation so far, and the latest

    def __call__(self, model: Any, state: Any) -> dict[str, float]:
        """{metric: value, metric_seconds: time it took}; the model is left in eval mode (the Trainer's
        training step switches it back). The predictions of the best step so far (`state.best_global_step`)
        and of this one are kept: the kept adapter is one of them, and need not predict again (`kept`)."""
        predictions, seconds = predict_system(
            self.task, model, self.tokenizer, self.examples, self.batch_size, "validation"
        )
        self.predictions = {s: p for s, p in self.predictions.items() if s == state.best_global_step}
        self.predictions[state.global_step] = predictions
        value = self.task.score(predictions, self.examples, only=self.metric)[self.metric]
        return {self.metric: float(value), f"{self.metric}_seconds": round(seconds, 3)}

    def kept(self, step: int) -> tuple[list[Example], list[Any]] | None:
        """The examples and the predictions made at `step`, if this process evaluated it; None otherwise
        (a step before `--resume`, or a last step that was not evaluated)."""
        found = self.predictions.get(step)
        return None if found is None else (self.examples, found)


class KeepBest(TrainerCallback):
    """A checkpoint at every evaluation (the best one must exist on disk to be kept, and to survive a kill),
    and an evaluation at the last step when evaluating every N steps (so the final weights are a candidate)."""

    def __init__(self, every_steps: bool) -> None:
        self.every_steps = every_steps

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.every_steps and state.global_step >= state.max_steps:
            control.should_evaluate = True

    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        control.should_save = True


def callbacks(recipe: Recipe, chosen: Plan) -> list[TrainerCallback]:
    """The callbacks a plan needs: `KeepBest`, and the Trainer's `EarlyStoppingCallback` when asked."""
    if chosen.keep != "best":
        return []
    found: list[TrainerCallback] = [KeepBest(recipe.train.eval_every is not None)]
    stop = recipe.train.early_stopping
    if stop is not None:
        found.append(EarlyStoppingCallback(stop.patience, stop.min_delta))
    return found


@dataclass
class Kept:
    """What `kept.json` records: which step's adapter the run kept, and why."""

    keep: str
    step: int
    reason: str
    metric: str | None = None
    value: float | None = None
    checkpoint: str | None = None  # the checkpoint folder the kept adapter came from (keep: best)
    steps_trained: int = 0
    early_stopped: bool = False
    evaluations: list[dict[str, float]] | None = None  # [{"step": s, "value": v}] in step order

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def evaluations(log_history: Sequence[dict[str, Any]], key: str) -> list[dict[str, float]]:
    """(step, value) of every validation evaluation in the Trainer's log history, the last one per step
    (a resumed run repeats the steps after its checkpoint)."""
    by_step = {int(row["step"]): float(row[key]) for row in log_history if key in row}
    return [{"step": step, "value": by_step[step]} for step in sorted(by_step)]


def ended_by(callbacks: Sequence[TrainerCallback], state: Any) -> str | None:
    """What ended training before `max_steps`: the Trainer's early stopping (its patience used up), or another
    callback that asked to stop (a sweep's pruner); None when training ran to the end."""
    if state.global_step >= state.max_steps:
        return None
    stopper = next((c for c in callbacks if isinstance(c, EarlyStoppingCallback)), None)
    if stopper is not None and stopper.early_stopping_patience_counter >= stopper.early_stopping_patience:
        return "early stopping"
    return "a callback's stop (e.g. a sweep's pruner)"


def keep_adapter(model: Any, state: Any, chosen: Plan, ended: str | None) -> Kept:
    """Load the best checkpoint's adapter weights into `model` (keep: best) and say what was kept and why;
    `ended` is what stopped training before max_steps (`ended_by`), if anything did."""
    history = evaluations(state.log_history, chosen.key) if chosen.key else []
    common = {"metric": chosen.metric, "steps_trained": state.global_step, "evaluations": history or None}
    if chosen.keep == "last":
        return Kept("last", state.global_step, f"the last step: {chosen.why_last}", **common)
    best = state.best_model_checkpoint
    if best is None or state.best_global_step is None:
        return Kept("best", state.global_step, "the last step: no validation evaluation happened", **common)
    from peft import set_peft_model_state_dict

    set_peft_model_state_dict(model, load_file(str(Path(best) / ADAPTER_WEIGHTS)))
    word = "highest" if chosen.greater_is_better else "lowest"
    reason = f"{word} validation {chosen.metric} ({state.best_metric:.4g}) of {len(history)} evaluations"
    if ended is not None:
        reason += f"; {ended} ended training at step {state.global_step}"
    return Kept(
        "best",
        int(state.best_global_step),
        reason,
        value=float(state.best_metric),
        checkpoint=Path(best).name,
        early_stopped=ended == "early stopping",
        **common,
    )

"""Training: the transformers `Trainer`, wired for LoRA on a (quantized) base with ftkit's guards.

ftkit does not write its own loop: it gives the Trainer a collator that keeps the EOS in the
loss, callbacks for a progress bar with tokens/s, a JSONL log and a NaN guard, and checks
afterwards that the adapter actually moved. Loss normalisation across gradient-accumulation
micro-batches is the Trainer's (it divides by the number of trained tokens in the whole
accumulated batch, `num_items_in_batch`, not per micro-batch).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from ftkit import lineage
from ftkit.data.encoding import IGNORE_INDEX, Encoded
from ftkit.data.prepared import PreparedData
from ftkit.errors import FtkitError
from ftkit.models import LoadedModel, compute_dtype, load_model
from ftkit.recipe import Recipe, TrainConfig
from ftkit.runs import DiskFullError, RunDir, append_jsonl, disk_guard, size_of, staged_dir, write_json, write_manifest
from ftkit.training import adapters, distributed, selection


class TrainingError(FtkitError):
    """Training that cannot start or that went wrong (e.g. a NaN loss)."""


class Collator:
    """Right-pad a batch; padded positions get label -100. EOS is never the pad token here."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, rows: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(row["input_ids"]) for row in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            n = len(row["input_ids"])
            input_ids[i, :n] = torch.tensor(row["input_ids"])
            labels[i, :n] = torch.tensor(row["labels"])
            attention_mask[i, :n] = 1
        return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


def as_rows(encoded: list[Encoded]) -> list[dict[str, list[int]]]:
    return [{"input_ids": e.input_ids, "labels": e.labels} for e in encoded]


class RunLog(TrainerCallback):
    """Progress bar (loss, tokens/s, ETA) and one JSONL line per logged step, on the main process only."""

    def __init__(self, run: RunDir, metric: str | None = None) -> None:
        self.run = run
        self.metric = metric  # the in-training validation metric, shown beside the validation loss
        self.bar: tqdm | None = None
        self.started = 0.0
        self.tokens_at_start = 0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            self.started = time.perf_counter()
            self.tokens_at_start = state.num_input_tokens_seen
            self.bar = tqdm(
                total=state.max_steps, initial=state.global_step, desc="train", unit="step", dynamic_ncols=True
            )

    def tokens_per_second(self, state: Any) -> float:
        elapsed = time.perf_counter() - self.started
        return (state.num_input_tokens_seen - self.tokens_at_start) / elapsed if elapsed > 0 else 0.0

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        if not state.is_world_process_zero or not logs:
            return
        row = {"step": state.global_step, "epoch": round(state.epoch or 0, 4), **logs}
        row["tokens_seen"] = int(state.num_input_tokens_seen)
        row["tokens_per_s"] = round(self.tokens_per_second(state), 1)
        row["elapsed_s"] = round(time.perf_counter() - self.started, 2)
        with self.run.train_log.open("a", encoding="utf-8") as handle:
            append_jsonl(handle, row)
        if self.bar is not None and "loss" in logs:
            self.bar.set_postfix(loss=f"{logs['loss']:.4f}", tok_s=f"{row['tokens_per_s']:.0f}")
        elif self.bar is not None and "eval_loss" in logs:
            self.bar.write(f"step {state.global_step}: " + describe_validation(logs, self.metric))

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.bar is not None:
            self.bar.close()


def describe_validation(logs: dict[str, float], metric: str | None) -> str:
    """One evaluation as the progress bar prints it: the loss, and the task's metric with what it cost."""
    text = f"validation loss {logs['eval_loss']:.4f}"
    if metric and selection.metric_key(metric) in logs:
        seconds = logs.get(selection.metric_key(f"{metric}_seconds"), 0.0)
        text += f", {metric} {logs[selection.metric_key(metric)]:.4f} ({seconds:.1f} s)"
    return text


class NanGuard(TrainerCallback):
    """Stop at the first non-finite loss, naming the step; earlier checkpoints are left untouched."""

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            raise TrainingError(
                f"loss became {loss} at step {state.global_step}; the last good checkpoint is kept. "
                "Likely causes: train.learning_rate too high, or fp16 overflow (use bfloat16/float32)"
            )


class CompletionLossTrainer(Trainer):
    """The Trainer, with the LM head and the loss computed only where a token carries loss.

    A sentiment example is ~50 prompt tokens and 2 trained tokens; projecting every position onto
    a 49k vocabulary (and back-propagating through the softmax) is wasted work and the largest
    activation in memory. Positions are kept where any row of the batch has a trained next token
    (`logits_to_keep` with indices), and the summed loss is divided by the Trainer's count of
    trained tokens in the whole accumulated batch, so gradient accumulation stays exact.
    """

    loss_is_scaled_for_ga = True
    max_batch_tokens: int | None = (
        None  # padded tokens one forward may hold; more and the batch is split (see training_step)
    )
    validation_metric: selection.ValidationMetric | None = None  # the task's metric, beside the validation loss

    def evaluation_loop(
        self,
        dataloader: Any,
        description: str,
        prediction_loss_only: bool | None = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> Any:
        """The Trainer's loss-only evaluation, plus the task's own metric on the validation examples: the
        Trainer then logs it, passes it to `on_evaluate` callbacks and selects the best checkpoint by it."""
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        if self.validation_metric is not None and output.metrics is not None and metric_key_prefix == "eval":
            found = self.validation_metric(self.model, self.state)
            output.metrics.update({selection.metric_key(name): value for name, value in found.items()})
        return output

    def training_step(
        self, model: Any, inputs: dict[str, torch.Tensor], num_items_in_batch: torch.Tensor | int | None = None
    ) -> torch.Tensor:
        """One micro-batch, run in row chunks when it holds more than `max_batch_tokens` padded tokens.

        Peak memory is set by the widest batch: one long example pads all its neighbours to its
        length. Each chunk's loss is divided by the trained-token count of the whole batch, so
        the chunks' gradients add up to the batch's own; the optimizer step does not change.
        Not under multi-process training, where each backward would synchronise gradients.
        """
        chunks = [inputs]
        if self.max_batch_tokens and num_items_in_batch is not None and self.args.world_size == 1:
            chunks = split_batch(inputs, self.max_batch_tokens)
        losses = [
            super(CompletionLossTrainer, self).training_step(model, chunk, num_items_in_batch) for chunk in chunks
        ]
        return sum(losses[1:], losses[0])

    def compute_loss(
        self,
        model: Any,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> Any:
        labels = inputs.pop("labels")
        keep = (labels[:, 1:] != IGNORE_INDEX).any(dim=0).nonzero().squeeze(-1)
        outputs = model(**inputs, logits_to_keep=keep, use_cache=False)
        targets = labels[:, keep + 1]
        loss = torch.nn.functional.cross_entropy(
            outputs.logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
        )
        if num_items_in_batch is None:
            loss = loss / (targets != IGNORE_INDEX).sum().clamp(min=1)
        else:
            loss = loss / num_items_in_batch
            if self.args.average_tokens_across_devices:  # the count was summed over processes; gradients are averaged
                loss = loss * self.accelerator.num_processes
        return (loss, outputs) if return_outputs else loss


def split_batch(batch: dict[str, torch.Tensor], max_tokens: int) -> list[dict[str, torch.Tensor]]:
    """Right-padded rows regrouped, longest first, into chunks of at most `max_tokens` padded tokens
    (a row longer than that is a chunk of its own); each chunk is cut to its own longest row."""
    if batch["input_ids"].numel() <= max_tokens:
        return [batch]
    lengths = batch["attention_mask"].sum(dim=1)
    order = lengths.argsort(descending=True, stable=True).tolist()
    chunks, start = [], 0
    while start < len(order):
        width = int(lengths[order[start]])
        end = start + max(1, max_tokens // max(width, 1))
        rows = torch.tensor(order[start:end])
        chunks.append({key: value[rows, :width] for key, value in batch.items()})
        start = end
    return chunks


def batch_token_budget(rows: list[Encoded], batch_size: int) -> int:
    """Padded tokens a micro-batch may hold: `batch_size` examples at the 90th-percentile length.

    Ordinary batches stay whole; only a batch that a long example widens well past the typical
    one is split, which bounds peak memory by the data's typical length, not its longest row.
    """
    lengths = sorted(len(row.input_ids) for row in rows)
    return batch_size * lengths[int(0.9 * (len(lengths) - 1))]


@dataclass
class TrainResult:
    model: Any  # the PeftModel, adapter named "default", still in memory for evaluation
    tokenizer: Any
    source: str
    steps: int
    train_loss: float
    tokens_per_s: float
    wall_s: float
    train_examples: int
    truncated: int
    lora_change: float | None  # None when FSDP/ZeRO-3 sharded the adapter (no process holds all of it)
    batch: dict[str, int]  # processes, per-device batch, accumulation, effective batch
    kept: selection.Kept  # which step's adapter `model` holds and was saved, and why
    # The validation examples and the kept adapter's predictions on them, made during training (None: not made).
    kept_validation: tuple[list[Any], list[Any]] | None = None


def optimizer_arguments(t: TrainConfig) -> dict[str, Any]:
    """The recipe's optimizer and schedule as Trainer arguments; the TRL benchmark gives its trainer the same."""
    return {
        "learning_rate": t.learning_rate,
        "lr_scheduler_type": t.lr_scheduler,
        "warmup_steps": t.warmup_ratio,  # transformers 5: a float below 1 is a share of the steps
        "weight_decay": t.weight_decay,
        "max_grad_norm": t.max_grad_norm,
        "seed": t.seed,
    }


def training_arguments(
    recipe: Recipe, run: RunDir, has_validation: bool, chosen: selection.Plan | None = None
) -> TrainingArguments:
    """The recipe as `TrainingArguments`; with a plan, the Trainer tracks the best step by its metric."""
    t = recipe.train
    on_gpu = torch.cuda.is_available()
    dtype = compute_dtype(recipe.model.compute_dtype)
    if not has_validation:
        eval_strategy = "no"
    else:
        eval_strategy = "steps" if t.eval_every else "epoch"
    return TrainingArguments(
        output_dir=str(run.checkpoints),
        num_train_epochs=t.epochs,
        max_steps=t.max_steps or -1,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=recipe.eval.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        **optimizer_arguments(t),
        data_seed=t.seed,
        logging_steps=t.log_every,
        logging_first_step=True,
        logging_nan_inf_filter=False,  # the Trainer would otherwise hide a NaN loss from the NaN guard
        eval_strategy=eval_strategy,
        eval_steps=t.eval_every,
        metric_for_best_model=chosen.key if chosen else None,
        greater_is_better=chosen.greater_is_better if chosen else None,
        restore_callback_states_from_checkpoint=True,  # early stopping's patience counter survives --resume
        save_strategy="steps",
        save_steps=t.save_every,
        save_total_limit=t.keep_checkpoints,
        train_sampling_strategy="group_by_length" if t.group_by_length else "random",
        prediction_loss_only=True,
        include_num_input_tokens_seen="non_padding",
        remove_unused_columns=False,
        report_to="none",  # the integration callbacks come from ftkit.tracking, attached to runs it opened
        run_name=recipe.name,
        disable_tqdm=True,
        use_cpu=not on_gpu,
        bf16=on_gpu and dtype == torch.bfloat16,
        fp16=on_gpu and dtype == torch.float16,
        dataloader_pin_memory=on_gpu,
        ddp_find_unused_parameters=False,  # every LoRA weight is used in every forward; True re-walks the graph
    )


def train(
    recipe: Recipe,
    run: RunDir,
    prepared: PreparedData,
    *,
    resume: bool = False,
    callbacks: Sequence[TrainerCallback] = (),
) -> TrainResult:
    """Fine-tune the recipe's adapter; the adapter is written to `run.adapter` when done.

    `callbacks` are added to ftkit's own (the training benchmark times steps with the same callback
    it gives the TRL trainer; a sweep observes each validation evaluation in `on_evaluate`, where
    `metrics[selection.metric_key(metric)]` is the task's metric). With `train.keep: best` the model
    returned and saved holds the best checkpoint's adapter (`TrainResult.kept` says which).
    """
    set_seed(recipe.train.seed)
    prepared.raise_if_fatal()
    train_set, val_set = prepared.encoded["train"], prepared.encoded.get("validation")
    chosen = selection.plan(recipe, prepared.task, val_set is not None, distributed.shards_parameters())
    # Before the model: under DeepSpeed ZeRO-3 the arguments are what makes `from_pretrained` load it partitioned.
    args = training_arguments(recipe, run, val_set is not None, chosen if chosen.metric else None)
    batch = _record_launch(args, run)
    loaded: LoadedModel = load_model(recipe.model)
    model = adapters.attach(loaded.model, recipe.adapter, recipe.train.gradient_checkpointing)
    before = adapters.lora_snapshot(model)

    log = RunLog(run, chosen.metric)
    trainer = CompletionLossTrainer(
        model=model,
        args=args,
        data_collator=Collator(loaded.tokenizer.pad_token_id),
        train_dataset=as_rows(train_set.rows),
        eval_dataset=as_rows(val_set.rows) if val_set else None,
        processing_class=loaded.tokenizer,
        callbacks=[log, NanGuard(), *selection.callbacks(recipe, chosen), *callbacks],
    )
    trainer.max_batch_tokens = batch_token_budget(train_set.rows, recipe.train.batch_size)
    if chosen.metric is not None:
        examples = prepared.splits["validation"].examples
        trainer.validation_metric = selection.ValidationMetric(
            recipe, prepared.task, loaded.tokenizer, examples, chosen.metric
        )
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    started = time.perf_counter()
    last = run.last_checkpoint()

    def checkpoint_bytes() -> int:
        done = run.last_checkpoint()
        return size_of(done) if done else 0

    try:
        with disk_guard(run.checkpoints, checkpoint_bytes, lambda: _kept(run.last_checkpoint(), "continue")):
            output = trainer.train(resume_from_checkpoint=str(last) if resume else None)
    except DiskFullError:
        run.drop_incomplete_checkpoints()
        raise
    wall = time.perf_counter() - started
    state = trainer.state
    kept = selection.keep_adapter(model, state, chosen, selection.ended_by(trainer.callback_handler.callbacks, state))
    gathered = distributed.gathered_state_dict(trainer)  # every process takes part; None unless sharded
    change = adapters.assert_moved(before, model) if not distributed.shards_parameters() else None

    last = run.last_checkpoint()
    if trainer.is_world_process_zero():
        needed = size_of(last) // 2 if last else 0  # the adapter and tokenizer, without the optimizer state
        # The guard inside the staged folder: it sees the disk before the half-written stage is removed.
        with staged_dir(run.adapter) as stage, disk_guard(run.adapter, needed, _kept(last, "finish")):
            model.save_pretrained(stage, state_dict=gathered)
            loaded.tokenizer.save_pretrained(stage)
            write_manifest(stage, {"lineage": lineage.record(recipe, loaded.source, loaded.tokenizer, prepared.splits)})
        write_json(run.kept, kept.to_json())
    return TrainResult(
        model=model,
        tokenizer=loaded.tokenizer,
        source=loaded.source,
        steps=output.global_step,
        train_loss=output.training_loss,
        tokens_per_s=log.tokens_per_second(trainer.state),
        wall_s=wall,
        train_examples=len(train_set.rows),
        truncated=train_set.truncated,
        lora_change=change,
        batch=batch,
        kept=kept,
        kept_validation=trainer.validation_metric.kept(kept.step) if trainer.validation_metric else None,
    )


def _kept(last: Path | None, verb: str) -> str:
    """What a disk-full message says survived, and how to go on."""
    if last is None:
        return "no checkpoint was complete yet; free space, then start again with ftkit train RECIPE --overwrite"
    return (
        f"the last complete checkpoint ({last.name}) and earlier files are intact; free space, then {verb} with "
        "ftkit train RECIPE --resume"
    )


def _record_launch(args: TrainingArguments, run: RunDir) -> dict[str, int]:
    """Print and record how many processes train and the effective batch they make together.

    Under DDP each process takes `per_device_train_batch_size` examples per micro-batch from its own shard,
    so one optimizer step averages over batch x processes x accumulation examples, and `max_steps` counts
    those steps: 2 processes with batch 4 take the same steps as 1 process with batch 8.
    """
    batch = distributed.batch_summary(
        args.per_device_train_batch_size, args.world_size, args.gradient_accumulation_steps
    )
    if args.process_index == 0:
        state = args.distributed_state
        backend = {"distributed_type": str(state.distributed_type.value), "backend": state.backend} if state else {}
        write_json(run.launch, batch | backend)
        print(distributed.describe_batch(batch), file=sys.stderr)
    return batch

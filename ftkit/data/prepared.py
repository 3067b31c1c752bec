"""The prepared data of a recipe: its task, the tokenizer, every split loaded and tokenised, and the
findings that make training refuse to start.

Built once per command (`prepare`) and passed down: `ftkit data` reports on it, `ftkit train`
refuses on its fatal findings and then trains and evaluates on it, without loading anything twice.
Fatal: held-out rows that duplicate training rows, examples with no trained token, an EOS that
carries no loss. Silent truncation, fully masked examples and missing EOS are among the most
reported problems with other toolkits; here they are counted before any weight is loaded.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ftkit.data.encoding import Encoded, say_once, stop_ids
from ftkit.data.overlap import Overlap, find_overlap
from ftkit.data.sources import DataError
from ftkit.data.splits import LoadedSplit, load_split
from ftkit.errors import FtkitError, RowError
from ftkit.models import check_quantizable, load_tokenizer, resolve_source
from ftkit.recipe import Recipe
from ftkit.tasks import Example, Task, get_task

HELD_OUT = ("validation", "test")


@dataclass
class EncodedSplit:
    rows: list[Encoded]
    examples: list[Example]  # the examples encoded, aligned with rows
    skipped: list[str]  # "file:row N: problem" for examples dropped under data.bad_rows: skip
    truncated: int  # examples whose prompt was cut to fit data.max_length
    tokens: int  # all tokens
    trained_tokens: int  # tokens that carry loss
    notes: Counter[str]  # what rendering adapted to the template, with how many examples it concerns


def encode_examples(task: Task, tokenizer: Any, examples: list[Example], *, skip_bad: bool = False) -> EncodedSplit:
    """Tokenise every example once.

    An example that cannot be encoded (a completion longer than data.max_length) or that has no
    trained token is an error naming its row, or, with `skip_bad`, a counted skip; never silent.
    """
    rows, kept, skipped = [], [], []
    for example in examples:
        try:
            encoded = task.encode(example, tokenizer)
            if encoded.trained_tokens == 0:
                raise RowError("no token of this example carries loss after truncation; raise data.max_length")
        except RowError as error:
            if not skip_bad:
                raise DataError(f"{example.where}: {error}") from None
            skipped.append(f"{example.where}: {error}")
            continue
        rows.append(encoded)
        kept.append(example)
    return EncodedSplit(
        rows=rows,
        examples=kept,
        skipped=skipped,
        truncated=sum(r.prompt_truncated for r in rows),
        tokens=sum(len(r.input_ids) for r in rows),
        trained_tokens=sum(r.trained_tokens for r in rows),
        notes=Counter(note for r in rows for note in r.notes),
    )


class PreflightError(FtkitError):
    """A fatal finding about the data: training would produce numbers that mean nothing."""


@dataclass
class PreparedData:
    """The task, tokenizer and loaded, tokenised splits of a recipe: built once per command and passed down."""

    task: Task  # with settings learnt from the training split (e.g. inferred labels)
    tokenizer: Any  # the base model's tokenizer, which encoded the splits
    source: str  # the resolved model folder or hub id
    splits: dict[str, LoadedSplit]
    encoded: dict[str, EncodedSplit]
    overlaps: list[Overlap]
    fatal: list[str] = field(default_factory=list)

    def raise_if_fatal(self) -> None:
        if self.fatal:
            raise PreflightError("\n".join(self.fatal))


def prepare(recipe: Recipe, held_out: Sequence[str] = HELD_OUT) -> PreparedData:
    """The recipe's task and tokenizer (no model weights), then every check below; a quantization the
    model's layers cannot take is refused here, before anything else loads. `held_out` names the held-out
    splits to load (a sweep leaves the test split unread until its search is over)."""
    source = resolve_source(recipe.model.source)
    task = get_task(recipe.task, recipe.data.max_length)
    tokenizer = load_tokenizer(source, recipe.model)
    check_quantizable(source, recipe.model)
    return prepare_splits(recipe, task, tokenizer, source, held_out)


def prepare_splits(
    recipe: Recipe, task: Task, tokenizer: Any, source: str, held_out: Sequence[str] = HELD_OUT
) -> PreparedData:
    """Load and tokenise every split, find train/held-out overlap, and collect fatal findings."""
    splits = {"train": load_split(recipe, task, "train")}
    task.observe(splits["train"].examples)
    for name in held_out:
        if recipe.data.has_split(name):
            splits[name] = load_split(recipe, task, name)
    encoded = {}
    for name, split in splits.items():
        encoded[name] = encode_examples(task, tokenizer, split.examples, skip_bad=recipe.data.bad_rows == "skip")
        split.examples, split.skipped = encoded[name].examples, split.skipped + encoded[name].skipped
        if not split.examples:
            raise DataError(f"{split.source}: no usable rows in split '{name}' (all {len(split.skipped)} skipped)")
    overlaps = [
        find_overlap(splits["train"].examples, splits[name].examples, name, recipe.data.near_duplicate_jaccard)
        for name in held_out
        if name in splits
    ]
    result = PreparedData(task, tokenizer, source, splits, encoded, overlaps)
    for note in encoded["train"].notes:
        say_once(note)
    for overlap in overlaps:
        if overlap.exact and not recipe.data.allow_overlap:
            held, seen = overlap.exact[0]
            result.fatal.append(
                f"{len(overlap.exact)} {overlap.split} example(s) duplicate training examples "
                f"(e.g. {held.where} = {seen.where}); "
                "remove them, or set data.allow_overlap: true to accept inflated held-out numbers"
            )
    stops = set(stop_ids(tokenizer))
    missing_eos = [e for e, r in zip(splits["train"].examples, encoded["train"].rows) if not stops & set(r.trained_ids)]
    if missing_eos:
        result.fatal.append(
            f"{len(missing_eos)} training example(s) have no EOS or end-of-turn token that carries loss "
            f"(e.g. {missing_eos[0].where}); the model would never learn to stop"
        )
    return result


def ready_task(recipe: Recipe) -> Task:
    """The recipe's task, ready to predict: it has seen the training split if it learns settings from it
    (e.g. `task.labels: null`). For commands that evaluate or probe without preparing every split."""
    task = get_task(recipe.task, recipe.data.max_length)
    if task.needs_training_data():
        task.observe(load_split(recipe, task, "train").examples)
    return task

"""Which held-out examples an evaluation uses, and what they represent.

`eval.max_examples` used to take the first N rows: on a label-sorted file that is one class,
reported with confidence intervals as if it measured accuracy. Here it draws a seeded sample,
stratified by label when the task classifies (`Task.label_of`), kept in file order, and says so.
The warnings name what no interval can fix: a held-out set with one class, or with labels the
training data never had.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ftkit.recipe import Recipe
from ftkit.tasks import Example, Task


@dataclass(frozen=True)
class Sample:
    examples: list[Example]
    total: int  # rows in the split it was drawn from
    seed: int
    stratified: bool

    @property
    def complete(self) -> bool:
        return len(self.examples) == self.total

    def describe(self) -> str:
        """'all 200 rows' or 'sample of 50 of 200 rows, stratified, seed 0': what report.md and the terminal say."""
        if self.complete:
            return f"all {self.total} rows"
        how = "stratified by label" if self.stratified else "uniform"
        return f"sample of {len(self.examples)} of {self.total} rows, {how}, seed {self.seed}"


def draw(task: Task, examples: Sequence[Example], max_examples: int | None, seed: int) -> Sample:
    """At most `max_examples` examples, drawn with `seed`; per label in proportion when the task has labels."""
    examples = list(examples)
    if max_examples is None or max_examples >= len(examples):
        return Sample(examples, len(examples), seed, stratified=False)
    rng = np.random.default_rng(seed)
    labels = [task.label_of(e) for e in examples]
    if any(label is None for label in labels):
        chosen = sorted(rng.choice(len(examples), size=max_examples, replace=False).tolist())
        return Sample([examples[i] for i in chosen], len(examples), seed, stratified=False)
    groups: dict[str, list[int]] = defaultdict(list)
    for index, label in enumerate(labels):
        groups[str(label)].append(index)
    quotas = _largest_remainder({k: len(v) for k, v in sorted(groups.items())}, max_examples)
    picked = [i for k, quota in quotas.items() for i in rng.choice(groups[k], size=quota, replace=False).tolist()]
    return Sample([examples[i] for i in sorted(picked)], len(examples), seed, stratified=True)


def _largest_remainder(sizes: dict[str, int], total: int) -> dict[str, int]:
    """Integer quotas proportional to `sizes` that sum to `total` (Hamilton's method, ties by label)."""
    whole = sum(sizes.values())
    exact = {k: total * n / whole for k, n in sizes.items()}
    quotas = {k: int(v) for k, v in exact.items()}
    for k in sorted(exact, key=lambda k: (quotas[k] - exact[k], k))[: total - sum(quotas.values())]:
        quotas[k] += 1
    return quotas


def label_balance(task: Task, examples: Sequence[Example]) -> Counter[str]:
    """How many examples carry each label; empty for tasks that do not classify."""
    return Counter(str(label) for e in examples if (label := task.label_of(e)) is not None)


def warnings(task: Task, train: Sequence[Example], held_out: Sequence[Example], split: str) -> list[str]:
    """What makes a held-out score mislead although the input is valid: one class, or labels training never saw."""
    seen, held = label_balance(task, train), label_balance(task, held_out)
    out = []
    if len(held) == 1:
        only = next(iter(held))
        out.append(
            f"the held-out {split} examples all have one label ('{only}'): the metrics say how often the model "
            "predicts it, not how well it tells labels apart; evaluate on a split with every label"
        )
    unseen = sorted(set(held) - set(seen)) if seen else []
    if unseen:
        out.append(
            f"held-out {split} labels {unseen} never occur in the training data ({sum(held[k] for k in unseen)} "
            "examples): the adapter cannot have learnt them"
        )
    return out


def held_out(
    task: Task, train: Sequence[Example], split: Sequence[Example], recipe: Recipe, name: str | None = None
) -> tuple[Sample, list[str]]:
    """The examples an evaluation uses (`eval.max_examples`, `eval.seed`) and the warnings about them."""
    drawn = draw(task, split, recipe.eval.max_examples, recipe.eval.seed)
    return drawn, warnings(task, train, drawn.examples, name or recipe.eval.split)

"""Is this model the adapter? Held-out probes, and how far two models' outputs are apart on them.

Merging and every export that writes a model (safetensors, GGUF) prove what they wrote with the
same measurements: max and mean |logit difference| on the probes, next-token agreement, and greedy
generations. The probes come from the run's own held-out split, each cut where its task says the
last answer starts (`Task.probe`), or, for an adapter without a run, from a few fixed chat prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ftkit.errors import FtkitError
from ftkit.evaluation.inference import generate_greedy, input_device
from ftkit.runs import RunDir

FALLBACK_PROMPTS = (
    "Write one sentence about the sea.",
    "What is the capital of France?",
    "List three colours.",
    "Explain what a fine-tuned model is in one sentence.",
)


class VerificationError(FtkitError):
    """A written model whose outputs do not match the model it was made from."""


@dataclass
class Probes:
    """Held-out token sequences: full (prompt + reference answer) for logits, prompts for generation."""

    full: list[list[int]]
    prompts: list[list[int]]


def probes(adapter_dir: Path, tokenizer: Any, count: int) -> Probes:
    """Prompts from the run's held-out split when the adapter sits in a run dir, else fixed ones."""
    recipe_file = RunDir(adapter_dir.parent).recipe
    if recipe_file.is_file():
        from ftkit.data.prepared import ready_task
        from ftkit.data.splits import load_split
        from ftkit.recipe import load_recipe

        recipe = load_recipe(recipe_file)
        task = ready_task(recipe)
        examples = load_split(recipe, task, recipe.eval.split).examples[:count]
        shown = [task.probe(example, tokenizer) for example in examples]
        return Probes(full=[probe.full for probe in shown], prompts=[probe.prompt for probe in shown])
    texts = [
        tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        for p in FALLBACK_PROMPTS[:count]
    ]
    ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    return Probes(full=ids, prompts=ids)


@torch.no_grad()
def logits_of(model: Any, sequences: Sequence[Sequence[int]]) -> list[torch.Tensor]:
    """Each sequence's logits, on the CPU: models compared with each other may sit on different devices
    (the quantized base on the GPU, the reloaded merged folder on the CPU)."""
    model.eval()
    device = input_device(model)
    return [model(torch.tensor([list(seq)], device=device)).logits[0].float().cpu() for seq in sequences]


@dataclass
class Agreement:
    """How far two models' outputs are apart on the same probes."""

    max_abs_logit_diff: float
    mean_abs_logit_diff: float
    next_token_agreement: float  # share of positions with the same argmax
    generations_equal: int
    generations: int


def agreement(a: list[torch.Tensor], b: list[torch.Tensor], gens_a: list[str], gens_b: list[str]) -> Agreement:
    diffs = [(x - y).abs() for x, y in zip(a, b)]
    same = sum(int((x.argmax(-1) == y.argmax(-1)).sum()) for x, y in zip(a, b))
    positions = sum(x.shape[0] for x in a)
    return Agreement(
        max_abs_logit_diff=float(max(d.max() for d in diffs)),
        mean_abs_logit_diff=float(torch.cat([d.flatten() for d in diffs]).mean()),
        next_token_agreement=same / positions,
        generations_equal=sum(x == y for x, y in zip(gens_a, gens_b)),
        generations=len(gens_a),
    )


@dataclass
class Outputs:
    logits: list[torch.Tensor]
    generations: list[str]


def outputs_of(model: Any, tokenizer: Any, probe: Probes, max_new_tokens: int) -> Outputs:
    return Outputs(logits_of(model, probe.full), generate_greedy(model, tokenizer, probe.prompts, max_new_tokens))


def compare(a: Outputs, b: Outputs) -> Agreement:
    return agreement(a.logits, b.logits, a.generations, b.generations)


def require(agreement: Agreement, tolerance: float, what: str) -> None:
    if agreement.max_abs_logit_diff > tolerance:
        raise VerificationError(
            f"{what}'s logits differ from the adapter's by {agreement.max_abs_logit_diff:.3g} "
            f"(> {tolerance:g}); nothing was written"
        )


def describe(label: str, a: Agreement) -> str:
    return (
        f"  {label}: max |Δlogit| {a.max_abs_logit_diff:.3g}, mean {a.mean_abs_logit_diff:.3g}, "
        f"next-token agreement {a.next_token_agreement:.1%}, "
        f"greedy generations equal {a.generations_equal}/{a.generations}"
    )

"""`ftkit data`: the pre-flight report on a recipe's prepared data, and a peak-memory estimate.

Everything here is known before any weight is loaded: rows per split and skipped bad rows, label
balance, token lengths, truncation, trained tokens and EOS, train/held-out overlap, two examples
with their loss-carrying part marked, and the findings that would make `ftkit train` refuse.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from ftkit.data.encoding import IGNORE_INDEX, Encoded, stop_ids
from ftkit.data.prepared import PreparedData, prepare
from ftkit.evaluation.sample import label_balance, warnings
from ftkit.models import compute_dtype, meta_model
from ftkit.recipe import Recipe, load_recipe


def inspect_data(recipe_path: Path, overrides: list[str]) -> int:
    """`ftkit data`: the pre-flight report; exit 2 (through the error) when training would refuse to start."""
    recipe = load_recipe(recipe_path, overrides)
    prepared = prepare(recipe)
    print(render_report(recipe, prepared))
    prepared.raise_if_fatal()
    return 0


def _percentiles(lengths: list[int]) -> str:
    ordered = sorted(lengths)

    def at(q: float) -> int:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return f"p50 {at(0.5)}, p90 {at(0.9)}, p99 {at(0.99)}, max {ordered[-1]}"


def render_example(tokenizer: Any, encoded: Encoded) -> str:
    """The example's text with its loss-carrying part marked «like this»; the rest carries no loss.

    Each run of trained or untrained tokens is decoded as a whole: SentencePiece decoders drop a word's
    leading space when a token is decoded alone, which would glue every word together.
    """
    out: list[str] = []
    start = 0
    for end in range(1, len(encoded.input_ids) + 1):
        trained = encoded.labels[start] != IGNORE_INDEX
        if end == len(encoded.input_ids) or (encoded.labels[end] != IGNORE_INDEX) != trained:
            text = tokenizer.decode(encoded.input_ids[start:end])
            out.append(f"«{text}»" if trained else text)
            start = end
    return "".join(out)


def render_report(recipe: Recipe, result: PreparedData) -> str:
    task, tokenizer = result.task, result.tokenizer
    lines = [f"task {task.name}, max_length {recipe.data.max_length} tokens"]
    lines.append(f"{'split':<11}{'rows':>7}{'skipped':>9}  source")
    for name, split in result.splits.items():
        lines.append(f"{name:<11}{len(split.examples):>7}{len(split.skipped):>9}  {split.source}")
        lines += [f"    skipped: {problem}" for problem in split.skipped[:3]]
    for name, split in result.splits.items():
        lines += _balance(name, label_balance(task, split.examples))
    lines += [
        f"WARNING: {warning}"
        for name in result.splits
        if name != "train"
        for warning in warnings(task, result.splits["train"].examples, result.splits[name].examples, name)
    ]
    for name, enc in result.encoded.items():
        lengths = [len(r.input_ids) for r in enc.rows]
        stops = set(stop_ids(tokenizer))
        eos = sum(bool(stops & set(r.trained_ids)) for r in enc.rows)
        lines.append(
            f"{name}: tokens/example {_percentiles(lengths)}; truncated {enc.truncated} of {len(enc.rows)}; "
            f"trained tokens {enc.trained_tokens} of {enc.tokens} "
            f"({100 * enc.trained_tokens / max(1, enc.tokens):.1f}%); "
            f"EOS/end of turn carries loss in {eos} of {len(enc.rows)}"
        )
        lines += [f"    note: {note} ({n} of {len(enc.rows)} examples)" for note, n in enc.notes.items()]
    lines.append("examples with no trained token: 0 (any would be an error naming its row)")
    for overlap in result.overlaps:
        lines.append(
            f"overlap train vs {overlap.split}: {len(overlap.exact)} exact, {len(overlap.near)} near "
            f"(word-trigram Jaccard >= {recipe.data.near_duplicate_jaccard})"
        )
        lines += [f"    exact: {held.where} = {seen.where}: {held.content[:70]!r}" for held, seen in overlap.exact[:3]]
        lines += [f"    near ({score:.2f}): {held.where} ~ {seen.where}" for held, seen, score in overlap.near[:3]]
    lines.append(f"peak memory estimate: {estimate_memory(recipe, result.source)}")
    for example, row in list(zip(result.splits["train"].examples, result.encoded["train"].rows))[:2]:
        lines.append(f"example {example.where} (loss only on «...»):")
        lines += [f"    {line}" for line in render_example(tokenizer, row).splitlines()]
    if result.fatal:
        lines.append("training would refuse to start (see the errors below)")
    return "\n".join(lines)


def _balance(split: str, labels: Counter[str]) -> list[str]:
    """One line of label balance for a split: every label's share, or the extremes when there are many."""
    total = sum(labels.values())
    if not labels:
        return []
    if len(labels) <= 20:
        shares = ", ".join(f"{k} {v} ({100 * v / total:.1f}%)" for k, v in sorted(labels.items()))
        return [f"label balance ({split}): {shares}"]
    (rare, low), (common, high) = min(labels.items(), key=lambda kv: kv[1]), max(labels.items(), key=lambda kv: kv[1])
    return [f"label balance ({split}): {len(labels)} labels; fewest {rare} {low} rows, most {common} {high} rows"]


RUNTIME_OVERHEAD_GB = 0.9  # torch, transformers, bitsandbytes and the tokenizer, measured on CPU


def estimate_memory(recipe: Recipe, source: str) -> str:
    """A rough peak-memory estimate for training, from the model's config alone (no weights loaded).

    Weights by quantization (bitsandbytes keeps non-linear weights in fp32 after k-bit preparation),
    LoRA weights with gradients and two Adam moments (16 bytes each), saved activations, and the
    logits of the larger of the training and evaluation micro-batches (fp32, with their softmax and
    gradient). Upper bound on sequence length: data.max_length.
    """
    import torch

    model = meta_model(source, recipe.model)
    config = model.config
    linears = [m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "lm_head" not in name]
    linear_params = sum(m.weight.numel() for m in linears)
    other_params = sum(p.numel() for p in model.parameters()) - linear_params
    per_linear = {"4bit": 0.55, "8bit": 1.05, "none": 4.0}[recipe.model.quantization]
    weights = linear_params * per_linear + other_params * 4
    targets = (
        linears
        if recipe.adapter.target_modules == "all-linear"
        else [
            m
            for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and name.split(".")[-1] in recipe.adapter.target_modules
        ]
    )
    lora = sum(recipe.adapter.r * (m.in_features + m.out_features) for m in targets) * 16
    tokens = recipe.train.batch_size * recipe.data.max_length
    hidden, layers = config.hidden_size, config.num_hidden_layers
    intermediate = getattr(config, "intermediate_size", 4 * hidden)
    activations = tokens * layers * (12 * hidden + 4 * intermediate) * 4
    if recipe.train.gradient_checkpointing:
        activations = tokens * layers * hidden * 4 + activations / layers
    logits = max(recipe.train.batch_size, recipe.eval.batch_size) * recipe.data.max_length * config.vocab_size * 4 * 3
    gb = 1024**3
    total = RUNTIME_OVERHEAD_GB + (weights + lora + activations + logits) / gb
    copies = ""
    if recipe.model.quantization == "4bit" and recipe.model.dequantized_base is not False:
        size = linear_params * compute_dtype(recipe.model.compute_dtype).itemsize
        copies = f"; on a CPU, + {size / gb:.2f} GB of dequantized copies (model.dequantized_base)"
    return (
        f"~{total:.1f} GB = weights {weights / gb:.2f} + LoRA/grad/Adam {lora / gb:.2f} "
        f"+ activations {activations / gb:.2f} + logits {logits / gb:.2f} + runtime {RUNTIME_OVERHEAD_GB} "
        f"(batch {recipe.train.batch_size} x {recipe.data.max_length} tokens){copies}"
    )

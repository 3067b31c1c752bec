"""Evaluation speed: batched label scoring vs one-example-at-a-time `generate`, same 200 examples.

Both classify the same held-out sentiment examples with the same model (the recipe's base model,
loaded as the recipe says) and are timed in alternation in one process, so machine noise hits
both. The generate baseline is what a user of a Trainer-based toolkit typically writes:
`model.generate(max_new_tokens=3)` per example, then parse the label word from the text.

    python bench/eval_speed.py [--recipe recipes/sentiment-smollm2-qlora.yaml] [--examples 200] [--repeats 2]

Writes bench/results/eval_speed.json and .md and prints the Markdown table; `make bench` runs it after
the training benchmark (bench/train_speed.py).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `python bench/eval_speed.py` finds bench/common.py

from common import SENTIMENT_RECIPE, machine, write_results  # noqa: E402

from ftkit.data.splits import load_split
from ftkit.evaluation.evaluator import predict_system
from ftkit.models import load_model
from ftkit.recipe import load_recipe
from ftkit.tasks import get_task


@torch.inference_mode()
def generate_one_at_a_time(model, tokenizer, examples, labels) -> list[str]:
    predictions = []
    for example in examples:
        ids = tokenizer(example.prompt, return_tensors="pt")
        out = model.generate(**ids, max_new_tokens=3, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        text = tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip().lower()
        predictions.append(next((label for label in labels if text.startswith(label)), text))
    return predictions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default=str(SENTIMENT_RECIPE))
    parser.add_argument("--examples", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    recipe = load_recipe(args.recipe)
    task = get_task(recipe.task, recipe.data.max_length)
    examples = load_split(recipe, task, "test").examples[: args.examples]
    loaded = load_model(recipe.model)
    model, tokenizer = loaded.model.eval(), loaded.tokenizer
    labels = list(recipe.task.labels)

    timings: dict[str, list[float]] = {"batched label scoring": [], "generate, one at a time": []}
    accuracy: dict[str, float] = {}
    for _ in range(args.repeats):
        for name in timings:
            started = time.perf_counter()
            if name == "batched label scoring":
                predictions, _ = predict_system(task, model, tokenizer, examples, args.batch_size, name)
            else:
                predictions = generate_one_at_a_time(model, tokenizer, examples, labels)
            timings[name].append(time.perf_counter() - started)
            accuracy[name] = sum(p == e.reference for p, e in zip(predictions, examples)) / len(examples)

    rows = []
    for name, seconds in timings.items():
        median = statistics.median(seconds)
        rows.append(
            {
                "method": name,
                "examples": len(examples),
                "median_s": round(median, 2),
                "examples_per_s": round(len(examples) / median, 2),
                "accuracy": accuracy[name],
                "runs_s": [round(s, 2) for s in seconds],
            }
        )
    speedup = rows[0]["examples_per_s"] / rows[1]["examples_per_s"]
    result = {
        "recipe": args.recipe,
        "quantization": recipe.model.quantization,
        "batch_size": args.batch_size,
        "torch_threads": torch.get_num_threads(),
        "machine": machine(),
        "rows": rows,
        "speedup": round(speedup, 2),
    }
    table = "\n".join(
        ["| method | examples | median s | examples/s | accuracy |", "|---|---|---|---|---|"]
        + [
            f"| {row['method']} | {row['examples']} | {row['median_s']} | {row['examples_per_s']} "
            f"| {row['accuracy']:.3f} |"
            for row in rows
        ]
    )
    out, _ = write_results("eval_speed", result, table)
    print(table)
    print(
        f"\nbatched label scoring is {speedup:.1f}x faster ({recipe.model.quantization}, batch {args.batch_size}, "
        f"{torch.get_num_threads()} threads); written to {out}"
    )


if __name__ == "__main__":
    main()

"""Evaluation speed of the product: the `ftkit eval` command vs one-example-at-a-time baselines, same examples.

For each task, the first `--examples` rows of the recipe's test file are written to a temporary file, and in
alternation (ftkit eval, baseline, ftkit eval, baseline, ...) so that machine noise hits both:

- **ftkit eval**: the command users run, `python -m ftkit.cli eval RECIPE --data FILE`, in a subprocess. Its
  time is the command's own prediction time (`eval_seconds` in its metrics.json: from the first batch to the
  last prediction), so loading the model and the statistics after it are excluded, and the benchmark cannot
  drift from the product.
- **baseline, one at a time**, in this process on the same model loaded the same way: for sentiment, what a
  Trainer-based toolkit typically does (`generate(max_new_tokens=3)` per example, then parse the label word);
  for qa and chat, greedy `generate` with a KV cache on one prompt at a time (the product's own
  `generate_greedy` with a batch of one), whose replies must equal the command's batched ones.
- with `--baselines same,bitsandbytes`, the same baseline once more on the base as transformers and bitsandbytes
  load it for any toolkit (`model.dequantized_base: false`: a 4-bit weight dequantized on every forward), so the
  table shows both what batching alone buys and what ftkit's evaluation buys over a plain one-at-a-time loop.

    python bench/eval_speed.py [--tasks sentiment,qa,chat] [--examples 200] [--repeats 2] [--baselines same]

Writes bench/results/eval_speed.json and .md and prints the Markdown table; `make bench` runs it after the
training benchmark (bench/train_speed.py). The many-label case is bench/label_scaling.py.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `python bench/eval_speed.py` finds bench/common.py

from common import ROOT, SENTIMENT_RECIPE, machine, write_results  # noqa: E402

from ftkit.models import load_model
from ftkit.recipe import Recipe, load_recipe
from ftkit.tasks import Example, Task, get_task
from ftkit.tasks.qa import first_line
from ftkit.tasks.sentiment import Sentiment

RECIPES = {
    "sentiment": SENTIMENT_RECIPE,
    "qa": ROOT / "recipes" / "qa-smollm2-qlora.yaml",
    "chat": ROOT / "recipes" / "customer-service-smollm2-lora-8bit.yaml",
}
METHOD = {"sentiment": "batched label scoring", "qa": "batched greedy decoding", "chat": "batched greedy decoding"}
BASELINE = {
    "sentiment": "generate + parse, one at a time",
    "qa": "generate, one at a time",
    "chat": "generate, one at a time",
}
# Which base a baseline runs on: the one `ftkit eval` loads, or bitsandbytes' own 4-bit path (no dequantized copies).
BASELINE_BASES = {"same": {}, "bitsandbytes": {"dequantized_base": False}}


def ftkit_eval(recipe: Path, data: Path, out: Path) -> tuple[float, list[Any]]:
    """Run the command; (its own prediction seconds for the base model, its predictions in input order)."""
    env = os.environ | {"PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"}
    command = [sys.executable, "-m", "ftkit.cli", "eval", str(recipe), "--data", str(data), "--out", str(out)]
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    seconds = json.loads((out / "metrics.json").read_text())["systems"]["base"]["eval_seconds"]
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    return float(seconds), [row["base"] for row in rows]


@torch.inference_mode()
def parse_generated_labels(model: Any, tokenizer: Any, task: Task, examples: Sequence[Example]) -> list[str]:
    labels = list(cast(Sentiment, task).labels)
    predictions = []
    for example in examples:
        ids = tokenizer(example.prompt, return_tensors="pt")
        out = model.generate(**ids, max_new_tokens=3, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        text = tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip().lower()
        predictions.append(next((label for label in labels if text.startswith(label)), text))
    return predictions


def generate_one_at_a_time(model: Any, tokenizer: Any, task: Task, examples: Sequence[Example]) -> list[Any]:
    """The task's own greedy generation (`Task.generate`: its prompts, truncation and stop tokens) in batches of
    one prompt, one `generate` each."""
    max_new = int(getattr(task.options, "max_new_tokens", 0))
    replies = task.generate(model, tokenizer, examples, 1, lambda _: None, max_new)
    return [first_line(reply) for reply in replies] if task.name == "qa" else replies


def baseline_for(name: str) -> Callable[[Any, Any, Task, Sequence[Example]], list[Any]]:
    return parse_generated_labels if name == "sentiment" else generate_one_at_a_time


def agreement(name: str, ours: list[Any], theirs: list[Any], examples: Sequence[Example]) -> dict[str, Any]:
    """For sentiment, each method's accuracy; for generation, how many batched replies equal the unbatched."""
    if name == "sentiment":
        correct = [sum(p == e.reference for p, e in zip(ps, examples)) for ps in (ours, theirs)]
        return {
            "accuracy": round(correct[0] / len(examples), 3),
            "baseline_accuracy": round(correct[1] / len(examples), 3),
        }
    texts = [p["reply"] if isinstance(p, dict) else p for p in ours]
    return {"identical_outputs": sum(a == b for a, b in zip(texts, theirs)), "of": len(examples)}


def baseline_method(name: str, base: str) -> str:
    return BASELINE[name] + ("" if base == "same" else f", {base} base")


def bench_task(name: str, recipe_path: Path, n: int, repeats: int, work: Path, bases: Sequence[str]) -> dict[str, Any]:
    recipe: Recipe = load_recipe(recipe_path)
    task = get_task(recipe.task, recipe.data.max_length)
    test = recipe.data.test
    assert isinstance(test, str), f"{recipe_path} names no data.test file"
    data = work / f"{name}.jsonl"
    data.write_text("".join(Path(test).read_text(encoding="utf-8").splitlines(keepends=True)[:n]), encoding="utf-8")
    from ftkit.data.splits import load_split

    examples = load_split(recipe, task, "test", path=data).examples
    loaded = {base: load_model(recipe.model.model_copy(update=BASELINE_BASES[base])) for base in bases}
    methods = {base: baseline_method(name, base) for base in bases}
    runs: dict[str, list[float]] = {METHOD[name]: [], **{method: [] for method in methods.values()}}
    ours: list[Any] = []
    theirs: dict[str, list[Any]] = {}
    for repeat in range(repeats):
        seconds, ours = ftkit_eval(recipe_path, data, work / f"{name}-{repeat}")
        runs[METHOD[name]].append(seconds)
        for base, one in loaded.items():
            started = time.perf_counter()
            theirs[base] = baseline_for(name)(one.model.eval(), one.tokenizer, task, examples)
            runs[methods[base]].append(time.perf_counter() - started)
    medians = {method: statistics.median(seconds) for method, seconds in runs.items()}
    del loaded
    first = methods[bases[0]]
    return {
        "task": name,
        "recipe": str(recipe_path.relative_to(ROOT)),
        "quantization": recipe.model.quantization,
        "batch_size": recipe.eval.batch_size,
        "examples": len(examples),
        "rows": [
            {
                "method": method,
                "median_s": round(medians[method], 2),
                "examples_per_s": round(len(examples) / medians[method], 2),
                "runs_s": [round(s, 2) for s in seconds],
            }
            for method, seconds in runs.items()
        ],
        "speedup": round(medians[first] / medians[METHOD[name]], 2),
        "per_pair_speedups": [round(b / a, 2) for a, b in zip(runs[METHOD[name]], runs[first])],
        "speedups": {method: round(medians[method] / medians[METHOD[name]], 2) for method in methods.values()},
        **agreement(name, ours, theirs[bases[0]], examples),
    }


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| task | method | examples | median s | examples/s | ftkit eval is | check |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        check = (
            f"accuracy {r['accuracy']:.3f} vs {r['baseline_accuracy']:.3f}"
            if "accuracy" in r
            else f"{r['identical_outputs']}/{r['of']} replies identical"
        )
        ours, *baselines = r["rows"]
        lines.append(
            f"| {r['task']} | ftkit eval: {ours['method']} | {r['examples']} | {ours['median_s']} "
            f"| {ours['examples_per_s']} | | {check} |"
        )
        for theirs in baselines:
            lines.append(
                f"| {r['task']} | {theirs['method']} | {r['examples']} | {theirs['median_s']} "
                f"| {theirs['examples_per_s']} | {r['speedups'][theirs['method']]}x faster | |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="sentiment,qa,chat", help="comma-separated, of: " + ", ".join(RECIPES))
    parser.add_argument("--examples", type=int, default=200, help="first N test rows of each recipe")
    parser.add_argument("--repeats", type=int, default=2, help="alternated pairs (ftkit eval, baseline) per task")
    parser.add_argument(
        "--baselines",
        default="same",
        help="comma-separated bases the one-at-a-time baseline runs on: 'same' (as ftkit eval loads it), "
        "'bitsandbytes' (no dequantized 4-bit copies); the speedup column uses the first",
    )
    args = parser.parse_args()
    bases = [base.strip() for base in args.baselines.split(",") if base.strip()]
    if not bases or any(base not in BASELINE_BASES for base in bases):
        parser.error(f"--baselines: choose from {list(BASELINE_BASES)}")
    names = [name.strip() for name in args.tasks.split(",") if name.strip()]
    unknown = [name for name in names if name not in RECIPES]
    if unknown:
        parser.error(f"--tasks: unknown {unknown}; choose from {list(RECIPES)}")
    with tempfile.TemporaryDirectory(prefix="ftkit-eval-bench-") as work:
        results = [bench_task(name, RECIPES[name], args.examples, args.repeats, Path(work), bases) for name in names]
    result = {"torch_threads": torch.get_num_threads(), "machine": machine(), "tasks": results}
    text = table(results)
    out, _ = write_results("eval_speed", result, text)
    print(text)
    print(f"\n`ftkit eval` timed by its own prediction seconds ({torch.get_num_threads()} threads); written to {out}")


if __name__ == "__main__":
    main()

"""Label scoring with many labels: per-example time and peak memory for 2, 77 and 150 labels.

Intent classification is label scoring with many labels. Each case classifies `--examples` real queries with
the default model loaded as the sentiment recipe says (4-bit NF4), through the product's `predict_system` at
`--batch-size`, in its own subprocess so that its peak RSS is its own:

- 2 labels: the sentiment recipe (its labels, template and test reviews);
- 77 labels: banking77's intents and test queries (../shared/datasets/banking77);
- 150 labels: CLINC150's intents and test queries (../shared/datasets/clinc150).

Cases run in the order 2, 77, 150, 2 (the second 2-label run shows how much the machine drifted meanwhile).

    python bench/label_scaling.py [--examples 48] [--batch-size 16]

Writes bench/results/label_scaling.json and .md and prints the table.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `python bench/label_scaling.py` finds bench/common.py

from common import ROOT, SENTIMENT_RECIPE, machine, write_results  # noqa: E402

SHARED = ROOT.parent / "shared" / "datasets"
INTENT_TEMPLATE = "Which intent does this customer query express?\nQuery: {text}\nIntent:"


def _sample(rows: list[tuple[str, str]], n: int) -> list[tuple[str, str]]:
    """A seeded sample: the test files are grouped by intent, so their head is one or two intents."""
    return random.Random(0).sample(rows, min(n, len(rows)))


def label_set(case: str, n: int) -> tuple[list[str], str, list[tuple[str, str]]]:
    """(labels, prompt template, (text, label) rows) of a case."""
    if case == "2":
        from ftkit.recipe import load_recipe

        recipe = load_recipe(SENTIMENT_RECIPE)
        assert isinstance(recipe.data.test, str), "the sentiment recipe names its test file"
        rows = [json.loads(line) for line in Path(recipe.data.test).read_text(encoding="utf-8").splitlines()]
        task = recipe.task.model_dump()
        return task["labels"], task["prompt_template"], [(r["text"], r["label"]) for r in rows[:n]]
    if case == "77":
        folder = SHARED / "banking77"
        labels = json.loads((folder / "categories.json").read_text(encoding="utf-8"))
        with (folder / "test.even.csv").open(encoding="utf-8") as f:
            rows = [(r["text"], r["category"]) for r in csv.DictReader(f)]
        return labels, INTENT_TEMPLATE, _sample(rows, n)
    data = json.loads((SHARED / "clinc150" / "data_full.shared.json").read_text(encoding="utf-8"))
    labels = sorted({intent for _, intent in data["train"]})
    return labels, INTENT_TEMPLATE, _sample([(t, i) for t, i in data["test"]], n)


def _current_rss_mb() -> float:
    """Resident memory now (the peak, ru_maxrss, is usually set by loading the model)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_case(case: str, n: int, batch_size: int) -> dict[str, Any]:
    """In the subprocess: load, classify, measure."""
    from ftkit.evaluation.evaluator import predict_system
    from ftkit.models import load_model
    from ftkit.recipe import load_recipe
    from ftkit.tasks import get_task
    from ftkit.tasks.sentiment import SentimentOptions

    labels, template, rows = label_set(case, n)
    task = get_task(SentimentOptions(name="sentiment", labels=labels, prompt_template=template), 192)
    examples = [task.make_example({"text": t, "label": label}, f"{case}:{i}") for i, (t, label) in enumerate(rows)]
    loaded = load_model(load_recipe(SENTIMENT_RECIPE).model)
    loaded_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    loaded_now = _current_rss_mb()
    started = time.perf_counter()
    predictions, seconds = predict_system(task, loaded.model, loaded.tokenizer, examples, batch_size, case)
    wall = time.perf_counter() - started
    return {
        "labels": len(labels),
        "examples": len(examples),
        "per_example_s": round(seconds / len(examples), 3),
        "wall_s": round(wall, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "peak_rss_after_loading_mb": round(loaded_peak),
        "rss_after_loading_mb": round(loaded_now),
        "rss_after_scoring_mb": round(_current_rss_mb()),
        "accuracy": round(sum(p == e.reference for p, e in zip(predictions, examples)) / len(examples), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--case", choices=["2", "77", "150"], help=argparse.SUPPRESS)  # one case, in a subprocess
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.examples, args.batch_size)))
        return
    env = os.environ | {"PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"}
    results = []
    for case in ("2", "77", "150", "2"):
        command = [sys.executable, __file__, "--case", case, "--examples", str(args.examples)]
        out = subprocess.run(
            [*command, "--batch-size", str(args.batch_size)], check=True, env=env, capture_output=True, text=True
        )
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(results[-1], flush=True)
    two = min(results[0]["per_example_s"], results[-1]["per_example_s"])
    two_rss = max(results[0]["peak_rss_mb"], results[-1]["peak_rss_mb"])
    lines = [
        "| labels | examples | s per example | x 2 labels | peak RSS MB | x 2 labels | accuracy |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        r["time_vs_2"] = round(r["per_example_s"] / two, 2)
        r["rss_vs_2"] = round(r["peak_rss_mb"] / two_rss, 2)
        lines.append(
            f"| {r['labels']} | {r['examples']} | {r['per_example_s']} | {r['time_vs_2']} | {r['peak_rss_mb']} "
            f"| {r['rss_vs_2']} | {r['accuracy']} |"
        )
    table = "\n".join(lines)
    write_results("label_scaling", {"batch_size": args.batch_size, "machine": machine(), "cases": results}, table)
    print(table)


if __name__ == "__main__":
    main()

"""The evidence before shipping: the run's held-out metric measured on the GGUF file through llama.cpp,
beside the adapter's own number from the run's `metrics.json`.

The task predicts exactly as its evaluation did (label scoring for classification, generation for the
others, on the same drawn examples), only through llama.cpp's logits (`llamacpp.LlamaCppModel`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ftkit.export.gguf import llamacpp
from ftkit.runs import RunDir

GGUF_EVALUATION = "gguf_evaluation.json"


def evaluate_gguf(adapter_dir: Path, gguf_path: Path, tokenizer: Any) -> dict[str, Any] | None:
    """The held-out metrics of the GGUF next to the adapter's; None for an adapter without a run (no data)."""
    from ftkit.data.prepared import ready_task
    from ftkit.data.splits import load_split
    from ftkit.evaluation.evaluator import predict_system, score_system
    from ftkit.evaluation.sample import draw
    from ftkit.recipe import load_recipe

    run = RunDir(adapter_dir.parent)
    if not (run.recipe.is_file() and run.metrics.is_file()):
        return None
    recipe = load_recipe(run.recipe)
    task = ready_task(recipe)
    split = load_split(recipe, task, recipe.eval.split).examples
    examples = draw(task, split, recipe.eval.max_examples, recipe.eval.seed)
    measured = json.loads(run.metrics.read_text(encoding="utf-8"))
    names = list(recipe.eval.metrics or task.metrics)
    model = llamacpp.LlamaCppModel(gguf_path, context=recipe.data.max_length + 8)
    predictions, seconds = predict_system(task, model, tokenizer, examples.examples, 1, "gguf (llama.cpp)")
    result = score_system(task, "gguf", predictions, seconds, examples.examples, names, recipe.eval.bootstrap)
    adapter = measured["systems"].get("adapter", {}).get("metrics", {})
    return {
        "judge": llamacpp.version(),
        "split": recipe.eval.split,
        "examples": len(examples.examples),
        "adapter_examples": measured.get("examples"),
        "primary_metric": names[0],
        "seconds": round(seconds, 1),
        "metrics": {
            name: {"gguf": interval.point, "adapter": adapter.get(name, {}).get("value")}
            for name, interval in result.metrics.items()
        },
    }


def describe(evaluation: dict[str, Any]) -> str:
    name = evaluation["primary_metric"]
    values = evaluation["metrics"][name]
    adapter = "n/a" if values["adapter"] is None else f"{values['adapter']:.3f}"
    return (
        f"held-out {evaluation['split']} {name} through {evaluation['judge']}: GGUF {values['gguf']:.3f} vs adapter "
        f"{adapter} on {evaluation['examples']} examples ({evaluation['seconds']} s)"
    )

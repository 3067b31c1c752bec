"""Adapters and run directories on the tiny test model, saved the way `ftkit train` saves them.

The LoRA weights are random (`init_lora_weights=False`) with a seed per adapter, so two adapters
answer differently without spending test time on training; the manifest carries a real lineage
record (`lineage.record`), so loading them runs the same lineage checks as a trained adapter.
"""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent


def tiny_recipe(folder: Path, base_dir: Path, name: str):  # -> Recipe
    """A valid chat recipe on the tiny model (its data files are the shipped customer-service ones)."""
    from ftkit.recipe import load_recipe

    train = REPO / "data" / "customer_service" / "train.jsonl"
    recipe = {
        "model": {"source": str(base_dir), "quantization": "none"},
        "adapter": {"r": 4, "alpha": 16, "dropout": 0.0},
        "task": {"name": "chat"},
        "data": {"train": str(train), "split": {"test": 0.2}},
        "output": {"dir": str(folder / "runs" / name)},
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return load_recipe(path)


def make_adapter(folder: Path, base_dir: Path, seed: int, *, recipe=None, trained_template: str | None = None) -> Path:
    """Save a random LoRA for `base_dir` into `folder`, with tokenizer and lineage manifest.

    `trained_template` records a different chat template as the one "trained with", to test that
    using the adapter with the tokenizer's current template is reported.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from ftkit import lineage
    from ftkit.models import load_tokenizer
    from ftkit.recipe import ModelConfig
    from ftkit.runs import write_manifest

    recipe = recipe or tiny_recipe(folder.parent, base_dir, folder.name)
    tokenizer = load_tokenizer(str(base_dir), ModelConfig(source=str(base_dir), quantization="none"))
    torch.manual_seed(seed)
    config = LoraConfig(r=4, lora_alpha=16, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM")
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(folder)
    recorded = tokenizer
    if trained_template is not None:
        recorded = copy.deepcopy(tokenizer)
        recorded.chat_template = trained_template
    write_manifest(folder, {"lineage": lineage.record(recipe, str(base_dir), recorded, {})})
    return folder


def make_run(root: Path, base_dir: Path, name: str, seed: int, **kwargs) -> Path:
    """A run directory `root/<name>` with `recipe.yaml` and `adapter/`, as `ftkit train` leaves it."""
    from ftkit.runs import write_text

    recipe = tiny_recipe(root, base_dir, name)
    run = root / name
    make_adapter(run / "adapter", base_dir, seed, recipe=recipe, **kwargs)
    write_text(run / "recipe.yaml", recipe.to_yaml())
    return run

"""Adapters and run directories on the tiny test model, saved the way `ftkit train` saves them.

The LoRA weights are random (`init_lora_weights=False`) with a seed per adapter, so two adapters
answer differently without spending test time on training; the manifest carries a real lineage
record (`lineage.record`), so loading them runs the same lineage checks as a trained adapter.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

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


def lora_model(model_dir: Path, *, dropout: float = 0.0, **model: Any):  # -> the PeftModel
    """The tiny model as `ftkit train` prepares it (`load_model`, then `adapters.attach`), with `model` as the
    `ModelConfig` fields, and LoRA B moved away from zero so that A has a gradient too (peft starts B at zero)."""
    import torch

    from ftkit.models import load_model
    from ftkit.recipe import AdapterConfig, ModelConfig
    from ftkit.training import adapters

    cfg = ModelConfig(source=str(model_dir), **model)
    peft_model = adapters.attach(load_model(cfg).model, AdapterConfig(r=4, alpha=8, dropout=dropout), False)
    torch.manual_seed(1)
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.02)
    return peft_model


def token_batch(*lengths: int):  # -> dict[str, torch.Tensor]
    """A right-padded training batch of rows of these lengths (ids 5, 6, ..., every token trained)."""
    from ftkit.training.trainer import Collator

    return Collator(0)([{"input_ids": list(range(5, 5 + n)), "labels": list(range(5, 5 + n))} for n in lengths])


def loss_and_grads(model: Any, batch: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """One training forward and backward: the loss and every parameter's gradient. Seeded, so that two calls
    draw the same dropout masks."""
    import torch

    model.zero_grad()
    torch.manual_seed(7)
    loss = model(**batch).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

"""Adapter lineage: what an adapter records, and what happens when it is used with something else."""

from __future__ import annotations

import json
import shutil
from copy import deepcopy

import pytest
import torch

from ftkit import lineage
from ftkit.models import load_model
from ftkit.recipe import ModelConfig
from ftkit.runs import RunDir
from ftkit.training import adapters


def test_adapter_manifest_records_its_lineage(trained_run, tiny_model_dir) -> None:
    adapter = RunDir(trained_run("lin")).adapter
    record = json.loads((adapter / "manifest.json").read_text())["lineage"]
    assert record["base_model"]["resolved"] == str(tiny_model_dir)
    assert record["base_model"]["fingerprint"] == lineage.base_fingerprint(str(tiny_model_dir))
    assert record["model"]["quantization"] == "none" and record["recipe"] == "lin"
    assert all(
        len(record[k]) == 64 for k in ("recipe_sha256", "tokenizer_sha256", "chat_template_sha256", "data_sha256")
    )
    config = lineage.base_config(adapter)
    assert (config.source, config.quantization, config.compute_dtype) == (str(tiny_model_dir), "none", "float32")


def test_an_adapter_is_refused_on_another_base_model(trained_run, tiny_model_dir, tmp_path) -> None:
    from transformers import AutoModelForCausalLM

    adapter = RunDir(trained_run("other")).adapter
    other = tmp_path / "other-base"
    shutil.copytree(tiny_model_dir, other)
    model = AutoModelForCausalLM.from_pretrained(other)
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight.mul_(1.01)  # same architecture and shapes, other weights
    model.save_pretrained(other)
    loaded = load_model(ModelConfig(source=str(other), quantization="none"))
    with pytest.raises(lineage.LineageError, match="was trained on base model"):
        adapters.load(loaded.model, adapter, tokenizer=loaded.tokenizer)
    # the right base, any quantization, is accepted
    right = load_model(ModelConfig(source=str(tiny_model_dir), quantization="4bit"))
    assert adapters.check(adapter, right.model, right.tokenizer) == []


def test_a_different_chat_template_is_reported(trained_run, tiny_model_dir) -> None:
    adapter = RunDir(trained_run("tmpl")).adapter
    loaded = load_model(ModelConfig(source=str(tiny_model_dir), quantization="none"))
    changed = deepcopy(loaded.tokenizer)
    changed.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    warnings = adapters.check(adapter, loaded.model, changed)
    assert len(warnings) == 1 and "chat template differs" in warnings[0]


def test_base_of_an_adapter_without_lineage(trained_run, tiny_model_dir) -> None:
    """Other tools' adapters: from a run's recipe.yaml if there is one, else peft's base path in full precision."""
    adapter = RunDir(trained_run("old", model={"quantization": "8bit"})).adapter
    (adapter / "manifest.json").unlink()
    assert lineage.base_config(adapter).quantization == "8bit"  # from runs/old/recipe.yaml
    (adapter.parent / "recipe.yaml").unlink()
    assert lineage.base_config(adapter) == ModelConfig(source=str(tiny_model_dir), quantization="none")

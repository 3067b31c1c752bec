"""End to end on the real default model (SmolLM2-135M-Instruct) in 4-bit NF4: QLoRA really learns."""

from __future__ import annotations

import json

import pytest
import torch

from ftkit.data.prepared import encode_examples, prepare
from ftkit.data.splits import load_split
from ftkit.recipe import load_recipe
from ftkit.runs import RunDir
from ftkit.tasks import get_task
from ftkit.training.trainer import Collator, as_rows, train

from ..conftest import REPO

pytestmark = pytest.mark.slow


@torch.no_grad()
def _loss(model, batch) -> float:
    model.eval()
    return float(model(**batch).loss)


def test_qlora_steps_on_the_default_model_move_lora_and_lower_the_loss(default_model_dir, tmp_path) -> None:
    train_rows = (REPO / "data/sentiment/train.jsonl").read_text().splitlines()[:24]
    small = tmp_path / "train.jsonl"
    small.write_text("\n".join(train_rows) + "\n")
    recipe = load_recipe(
        REPO / "recipes/sentiment-smollm2-qlora.yaml",
        [
            f"data.train={small}",
            "data.validation=null",
            "train.max_steps=6",
            "train.batch_size=4",
            "train.grad_accum=1",
            "train.learning_rate=5e-4",
            f"output.dir={tmp_path / 'run'}",
        ],
    )
    assert recipe.model.source == "default" and recipe.model.quantization == "4bit"
    run = RunDir(recipe.run_dir)
    run.path.mkdir(parents=True)

    result = train(recipe, run, prepare(recipe))

    assert result.model.base_model.model.is_loaded_in_4bit
    assert result.steps == 6 and result.lora_change is not None and result.lora_change > 0
    config = json.loads((run.adapter / "adapter_config.json").read_text())
    assert config["r"] == 16 and config["peft_type"] == "LORA"
    task = get_task(recipe.task, recipe.data.max_length)
    fixed = encode_examples(task, result.tokenizer, load_split(recipe, task, "train").examples[:8])
    batch = Collator(result.tokenizer.pad_token_id)(as_rows(fixed.rows))
    with result.model.disable_adapter():
        before = _loss(result.model, batch)
    after = _loss(result.model, batch)
    assert after < 0.5 * before, f"completion loss should fall sharply: base {before:.3f}, adapter {after:.3f}"

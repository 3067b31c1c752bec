"""Frozen 4-bit weights kept dequantized for training: bit-identical losses, gradients and adapters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from ftkit.cli import main
from ftkit.models import load_model
from ftkit.recipe import AdapterConfig, ModelConfig, load_recipe
from ftkit.training import adapters, dequantized
from ftkit.training.trainer import Collator


def _lora_model(model_dir: Path, compute_dtype: Any, double_quant: bool) -> torch.nn.Module:
    cfg = ModelConfig(
        source=str(model_dir), quantization="4bit", compute_dtype=compute_dtype, double_quant=double_quant
    )
    model = adapters.attach(load_model(cfg).model, AdapterConfig(r=4, alpha=8, dropout=0.0), False)
    torch.manual_seed(1)
    for name, param in model.named_parameters():
        if "lora_B" in name:  # peft starts B at zero, which would leave A's gradient zero too
            param.data.normal_(0, 0.02)
    return model


def _loss_and_grads(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
    model.zero_grad()
    loss = model(**batch).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(
    ("compute_dtype", "double_quant"), [("bfloat16", True), ("bfloat16", False), ("float32", True)]
)
def test_training_against_the_copies_is_bit_identical(tiny_model_dir: Path, compute_dtype, double_quant) -> None:
    model = _lora_model(tiny_model_dir, compute_dtype, double_quant)
    rows = [{"input_ids": list(range(5, 5 + n)), "labels": list(range(5, 5 + n))} for n in (9, 14, 6)]
    batch = Collator(0)(rows)
    model.train()
    loss, grads = _loss_and_grads(model, batch)
    kept = dequantized.keep_dequantized(model)
    layers = list(dequantized.four_bit_layers(model))
    assert layers and kept == dequantized.copy_bytes(model) > 0
    loss_kept, grads_kept = _loss_and_grads(model, batch)
    assert torch.equal(loss, loss_kept)
    assert grads.keys() == grads_kept.keys()
    assert all(torch.equal(grads[name], grads_kept[name]) for name in grads)
    # the copies are what trains: with the packed 4-bit codes wiped, the training loss does not move,
    # while outside training the layers are bitsandbytes' own again and see the wiped codes
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    model.eval()
    with torch.no_grad():
        before_wipe = model(**inputs).logits
        for layer in layers:
            layer.weight.data.zero_()
        after_wipe = model(**inputs).logits
    assert not torch.equal(before_wipe, after_wipe)
    model.train()
    assert torch.equal(_loss_and_grads(model, batch)[0], loss)


def test_the_copy_is_what_bitsandbytes_multiplies_with(tiny_model_dir: Path) -> None:
    """The module's dequantization against bitsandbytes' own matmul of the same layer, one layer at a time."""
    import bitsandbytes as bnb

    model = _lora_model(tiny_model_dir, "bfloat16", True)
    layer = next(dequantized.four_bit_layers(model))
    x = torch.randn(3, layer.in_features, dtype=torch.bfloat16)
    weight = dequantized.dequantized(layer.weight.data, layer.weight.quant_state, torch.bfloat16)
    expected = bnb.matmul_4bit(x, layer.weight, quant_state=layer.weight.quant_state)
    assert torch.equal(torch.nn.functional.linear(x, weight), expected)


def test_auto_keeps_them_on_a_cpu_and_never_for_an_unquantized_base(tiny_model_dir: Path) -> None:
    model = _lora_model(tiny_model_dir, "bfloat16", True)
    assert dequantized.wanted("auto", model) is True
    assert dequantized.wanted(False, model) is False
    plain = load_model(ModelConfig(source=str(tiny_model_dir), quantization="none")).model
    assert dequantized.wanted("auto", plain) is False


def test_a_run_trains_the_same_adapter_either_way(write_recipe, capsys) -> None:
    adapters_by_setting = {}
    for setting in (True, False):
        path = write_recipe(f"deq-{setting}", model={"quantization": "4bit"}, train={"dequantized_base": setting})
        assert main(["train", str(path), "--no-eval"]) == 0
        assert ("kept dequantized for training" in capsys.readouterr().err) is setting
        weights = load_file(load_recipe(path).run_dir / "adapter" / "adapter_model.safetensors")
        adapters_by_setting[setting] = weights
    on, off = adapters_by_setting[True], adapters_by_setting[False]
    assert on.keys() == off.keys() and all(torch.equal(on[k], off[k]) for k in on)


def test_a_bad_setting_is_refused_by_name(write_recipe, capsys) -> None:
    path = write_recipe("deq-bad", train={"dequantized_base": "sometimes"})
    assert main(["train", str(path)]) == 2
    assert "train.dequantized_base" in capsys.readouterr().err

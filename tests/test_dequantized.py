"""Frozen 4-bit weights kept dequantized: bit-identical losses, gradients, adapters and inference logits."""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from ftkit import dequantized, few_rows
from ftkit.cli import main
from ftkit.models import load_model
from ftkit.recipe import ModelConfig, load_recipe
from tests.tiny_adapters import lora_model, loss_and_grads, token_batch


def _lora_model(model_dir: Path, compute_dtype: Any, double_quant: bool) -> torch.nn.Module:
    return lora_model(model_dir, quantization="4bit", compute_dtype=compute_dtype, double_quant=double_quant)


@pytest.mark.parametrize(
    ("compute_dtype", "double_quant"), [("bfloat16", True), ("bfloat16", False), ("float32", True)]
)
def test_training_against_the_copies_is_bit_identical(tiny_model_dir: Path, compute_dtype, double_quant) -> None:
    model = _lora_model(tiny_model_dir, compute_dtype, double_quant)
    batch = token_batch(9, 14, 6)
    model.train()
    loss, grads = loss_and_grads(model, batch)
    kept = dequantized.keep_dequantized(model)
    layers = list(dequantized.four_bit_layers(model))
    assert layers and kept == dequantized.copy_bytes(model) > 0
    loss_kept, grads_kept = loss_and_grads(model, batch)
    assert torch.equal(loss, loss_kept)
    assert grads.keys() == grads_kept.keys()
    assert all(torch.equal(grads[name], grads_kept[name]) for name in grads)
    # the copies are what trains: with the packed 4-bit codes wiped, the training loss does not move
    for layer in layers:
        layer.weight.data.zero_()
    assert torch.equal(loss_and_grads(model, batch)[0], loss)


@pytest.mark.parametrize(("compute_dtype", "double_quant"), [("bfloat16", True), ("float32", True), ("float32", False)])
def test_inference_against_the_copies_is_bit_identical(
    tiny_model_dir: Path, compute_dtype, double_quant, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Against bitsandbytes' dequantize-then-matmul inference, on any CPU: its fused AVX512-BF16 kernel, where the
    CPU has one, is switched off per layer for the reference (that kernel is why `auto` leaves inference alone).
    The few-row `W @ x.T` of float32 inference (`few_rows`, other summation order: equal only on some CPUs' MKL
    kernels) is off here; with it on the logits stay within float32 rounding."""
    monkeypatch.setattr(few_rows, "FEW_ROWS", 1)
    model = _lora_model(tiny_model_dir, compute_dtype, double_quant).eval()
    layers = list(dequantized.four_bit_layers(model))
    for layer in layers:
        layer.support_avx512bf16_for_cpu = False
    inputs = {k: v for k, v in token_batch(9, 4).items() if k != "labels"}
    with torch.inference_mode():
        reference = model(**inputs).logits
        dequantized.keep_dequantized(model, True)
        assert torch.equal(model(**inputs).logits, reference)
        for layer in layers:  # the copies are what runs
            layer.weight.data.zero_()
        assert torch.equal(model(**inputs).logits, reference)
        monkeypatch.undo()
        assert torch.allclose(model(**inputs).logits, reference, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("setting", "fused_kernel", "expected"),
    [("auto", False, True), ("auto", True, False), (True, True, True), (True, False, True)],
)
def test_auto_leaves_inference_to_the_fused_kernel(setting, fused_kernel: bool, expected: bool) -> None:
    layer = types.SimpleNamespace(support_avx512bf16_for_cpu=fused_kernel)
    assert dequantized.for_inference(setting, layer) is expected


@pytest.mark.parametrize("setting", [True, False])
def test_load_model_keeps_them_as_the_recipe_says(tiny_model_dir: Path, setting: bool, capsys) -> None:
    cfg = ModelConfig(
        source=str(tiny_model_dir), quantization="4bit", compute_dtype="float32", dequantized_base=setting
    )
    model = load_model(cfg).model.train()  # training mode: bitsandbytes' own path is the same on every CPU
    assert ("kept dequantized for training and inference" in capsys.readouterr().err) is setting
    ids = torch.tensor([list(range(5, 14))])
    with torch.no_grad():
        before = model(input_ids=ids).logits
        for layer in dequantized.four_bit_layers(model):
            layer.weight.data.zero_()
        assert torch.equal(model(input_ids=ids).logits, before) is setting


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
        path = write_recipe(f"deq-{setting}", model={"quantization": "4bit", "dequantized_base": setting})
        assert main(["train", str(path), "--no-eval"]) == 0
        assert ("kept dequantized for training" in capsys.readouterr().err) is setting
        weights = load_file(load_recipe(path).run_dir / "adapter" / "adapter_model.safetensors")
        adapters_by_setting[setting] = weights
    on, off = adapters_by_setting[True], adapters_by_setting[False]
    assert on.keys() == off.keys() and all(torch.equal(on[k], off[k]) for k in on)


def test_a_bad_setting_is_refused_by_name(write_recipe, capsys) -> None:
    path = write_recipe("deq-bad", model={"dequantized_base": "sometimes"})
    assert main(["train", str(path)]) == 2
    assert "model.dequantized_base" in capsys.readouterr().err

"""The LoRA layers' lean training forward: peft's losses and gradients, peft's own forward everywhere else."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from ftkit.training import lora_forward
from tests.tiny_adapters import lora_model, loss_and_grads, token_batch


def _models(model_dir: Path, quantization: str, dtype: str) -> tuple[torch.nn.Module, list[Any]]:
    """A LoRA model as `attach` makes it (dropout on, B away from zero) and its LoRA layers."""
    model = lora_model(model_dir, dropout=0.1, quantization=quantization, compute_dtype=dtype)
    layers = [m for m in model.modules() if isinstance(getattr(m, "forward", None), lora_forward._LeanForward)]
    return model, layers


def _peft_forward(layers: list[Any]) -> None:
    for layer in layers:
        del layer.forward  # the instance attribute goes; the class's (peft's) forward is back


@pytest.mark.parametrize(("quantization", "dtype"), [("4bit", "bfloat16"), ("none", "float32"), ("none", "bfloat16")])
def test_training_forward_gives_peft_losses_and_gradients(tiny_model_dir: Path, quantization, dtype) -> None:
    model, layers = _models(tiny_model_dir, quantization, dtype)
    targets = [m for m in model.modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer")]
    assert layers and len(layers) == len(targets)  # every LoRA linear layer of the model
    batch = token_batch(9, 14, 6)
    model.train()
    loss, grads = loss_and_grads(model, batch)
    _peft_forward(layers)
    loss_peft, grads_peft = loss_and_grads(model, batch)
    assert grads.keys() == grads_peft.keys() and any("lora_A" in name for name in grads)
    assert torch.allclose(loss, loss_peft, rtol=1e-6, atol=0)
    for name, grad in grads.items():
        assert torch.allclose(grad, grads_peft[name], rtol=1e-4, atol=1e-7), name


def test_disabled_adapters_train_the_base_alone(tiny_model_dir: Path) -> None:
    """Under peft's `disable_adapter()` the lean forward is peft's: the base's logits, without the LoRA sum."""
    model, layers = _models(tiny_model_dir, "4bit", "bfloat16")
    peft_model: Any = model
    inputs = {k: v for k, v in token_batch(9, 14, 6).items() if k != "labels"}
    model.train()
    with torch.no_grad():
        torch.manual_seed(7)
        with_adapter = model(**inputs).logits
        with peft_model.disable_adapter():
            lean_base = model(**inputs).logits
        _peft_forward(layers)
        with peft_model.disable_adapter():
            assert torch.equal(model(**inputs).logits, lean_base)
    assert not torch.equal(with_adapter, lean_base)  # the adapter does change the logits

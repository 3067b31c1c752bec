"""A 4-bit base run against dequantized copies of its frozen weights: the same numbers, without dequantizing them
on every forward.

bitsandbytes' 4-bit layer on a CPU dequantizes its weight to the compute dtype on every forward (and, training,
again on every backward: `gemm_4bit`'s default kernel, then `MatMul4Bit.backward`), then does an ordinary
matmul with it. The weight is frozen, so that dequantization gives the same tensor every time: this module
computes it once per layer and runs against the copy. The forward is `F.linear(x, W, bias)` and the backward
autograd's `grad @ W`, exactly the operations bitsandbytes runs on the tensor it would have dequantized, so
logits, losses and gradients are bit-identical (tests compare them). Decoding one token at a time gains the most:
there the dequantization is most of a step's work. (A float32 inference forward of 2-64 rows, a decode step of
several sequences, multiplies as `W @ x.T` instead, up to twice as fast: the same products summed in another order,
see `few_rows`.)

Inference is the exception: on a CPU with AVX512-BF16, bitsandbytes repacks the weight at the first inference
forward for a fused 4-bit kernel that never dequantizes (other rounding). There `auto` leaves inference to that
kernel, so evaluation keeps bitsandbytes' numbers, and uses the copies for training only; `true` uses them for
both. Cost: the compute-dtype copy of every 4-bit weight stays in memory (2 bytes per weight in bfloat16, 4 in
float32, against ~0.5), which is why `model.dequantized_base` can turn it off and why `auto` asks for room first.
On a GPU bitsandbytes' own kernels are fast and memory is the scarce resource, so `auto` leaves them alone there.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any, Literal

import torch

from ftkit import few_rows

Setting = bool | Literal["auto"]

# `auto` keeps the copies when they take at most this share of the memory the system has free
AUTO_SHARE_OF_AVAILABLE = 0.25


def four_bit_layers(model: torch.nn.Module) -> Iterator[Any]:
    """Every bitsandbytes 4-bit linear layer of `model` (under peft they are the LoRA layers' base layers)."""
    import bitsandbytes as bnb

    return (m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit))


def copy_bytes(model: torch.nn.Module) -> int:
    """What the dequantized copies of every 4-bit weight take, in bytes."""
    return sum(
        layer.weight.quant_state.shape.numel() * compute_dtype_of(layer).itemsize for layer in four_bit_layers(model)
    )


def compute_dtype_of(layer: Any) -> torch.dtype:
    return layer.compute_dtype or torch.float32


def wanted(setting: Setting, model: torch.nn.Module) -> bool:
    """Whether to keep the copies: as the recipe says, or under `auto` on a CPU with room for them."""
    if setting != "auto":
        return bool(setting) and any(True for _ in four_bit_layers(model))
    layers = list(four_bit_layers(model))
    if not layers or layers[0].weight.device.type != "cpu":
        return False
    import psutil

    return copy_bytes(model) <= AUTO_SHARE_OF_AVAILABLE * psutil.virtual_memory().available


def for_inference(setting: Setting, layer: Any) -> bool:
    """Whether inference uses the copy too: always under `true`; under `auto` where bitsandbytes' own inference
    is the same dequantize-then-matmul (its fused kernel for CPUs with AVX512-BF16 rounds otherwise)."""
    return setting is True or not getattr(layer, "support_avx512bf16_for_cpu", False)


def keep_dequantized(model: torch.nn.Module, setting: Setting = "auto") -> int:
    """Give every 4-bit layer its dequantized weight; returns the bytes the copies take."""
    total = 0
    for layer in four_bit_layers(model):
        weight = dequantized(layer.weight.data, layer.weight.quant_state, compute_dtype_of(layer))
        layer.forward = _DequantizedForward(layer, weight, layer.forward, for_inference(setting, layer))
        total += weight.numel() * weight.element_size()
    return total


def keep_if_wanted(model: torch.nn.Module, setting: Setting) -> int:
    """`keep_dequantized` where `wanted` says so, saying on stderr what it costs and what it is used for."""
    if not wanted(setting, model):
        return 0
    total = keep_dequantized(model, setting)
    used = "training and inference" if for_inference(setting, next(four_bit_layers(model))) else "training"
    print(
        f"4-bit base weights kept dequantized for {used}: {total / 1e6:.0f} MB "
        "(model.dequantized_base: false saves it)",
        file=sys.stderr,
    )
    return total


def dequantized(packed: torch.Tensor, state: Any, dtype: torch.dtype) -> torch.Tensor:
    """The weight exactly as bitsandbytes' `gemm_4bit` dequantizes it for a matmul in `dtype`: a nested
    (double-quantized) state's block scales first, in float32, then the 4-bit codes straight to `dtype`."""
    ops = torch.ops.bitsandbytes
    absmax = state.absmax
    if state.nested:
        absmax = ops.dequantize_blockwise.default(absmax, state.state2.absmax, state.state2.code, 256, torch.float32)
        absmax = absmax + state.offset
    return ops.dequantize_4bit.default(
        packed.view(-1, 1), absmax, state.blocksize, state.quant_type, state.shape, dtype
    )


class _DequantizedForward:
    """A 4-bit layer's forward: the dequantized copy while training (and in inference when `inference`),
    bitsandbytes' own otherwise."""

    def __init__(self, layer: Any, weight: torch.Tensor, original: Any, inference: bool) -> None:
        self.layer, self.weight, self.original, self.inference = layer, weight, original, inference

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.layer.training or self.inference):
            return self.original(x)
        bias = self.layer.bias
        # bitsandbytes: input in the compute dtype, bias likewise, output back in the input's dtype
        narrow, bias = x.to(self.weight.dtype), None if bias is None else bias.to(self.weight.dtype)
        # F.linear, or in inference on a decode step's few rows W @ x.T
        return few_rows.linear(narrow, self.weight, bias, training=self.layer.training).to(x.dtype)

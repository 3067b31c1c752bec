"""Inference matmuls of a decode step's rows on a CPU in float32: `W @ x.T`, not `x @ W.T`.

A decode step multiplies every weight by one row per sequence: a server's streams, a batched generation's 16
rows. `F.linear(x, W)` asks MKL for `x @ W.T`, which for 2-9 rows repacks all of W on every call and runs at
about half the speed of one row; `W @ x.T` reads W once. The default model's 211 weights as distinct tensors
(2-core AMD EPYC, float32, min of 5, two runs under neighbours' load, ms):

| rows | 1 | 2 | 4 | 8 | 10 | 12 | 16 | 32 | 64 | 128 | 256 |
|---|---|---|---|---|---|---|---|---|---|---|---|
| `F.linear` | 76-82 | 113-123 | 148-155 | 122-126 | 111-142 | 127-138 | 137-153 | 181-200 | 259-261 | 386 | 699 |
| `W @ x.T` | 71-79 | 47-58 | 52-55 | 65-82 | 103-105 | 113-119 | 97 | 122-127 | 192-201 | 329 | 670 |

`W @ x.T` was never the slower; from 128 rows (a prefill, not a decode step) the gain is small, so 2 to
`FEW_ROWS` rows take it, and one row or more than that stay `F.linear`. (One row multiplied as two would take
both cores, which MKL's one-row product does not: 55 ms; but in `ftkit serve` the second core also carries the
HTTP streams, and an interleaved A/B measured one client's tokens/s 3 % lower that way, so one row stays.)

The products are the same, summed in another order, so outputs differ in their last bits (max |diff| ~1e-6 of
values ~1), as `F.linear`'s own outputs for one row already differ from its outputs for two: greedy answers of
batched and one-at-a-time decoding are tested to be equal.

Only inference takes it (a module in eval mode): training's numbers stay `F.linear`'s. bfloat16 matmuls go to
oneDNN, which was not measured to need it, so they are left alone.
"""

from __future__ import annotations

from typing import Any

import torch

# Inference on 2 to FEW_ROWS rows multiplies `W @ x.T`
FEW_ROWS = 64


def linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *, training: bool = False
) -> torch.Tensor:
    """`F.linear(x, weight, bias)`, as `weight @ x.T` in inference where that is faster (see the module's
    docstring); while `training`, always `F.linear`."""
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    if training or not (1 < rows <= FEW_ROWS and _fits(weight)):
        return torch.nn.functional.linear(x, weight, bias)
    out = torch.mm(weight, x.reshape(rows, -1).T).T.reshape(*x.shape[:-1], -1)
    return out if bias is None else out + bias


class _FewRowsForward:
    """A plain `nn.Linear`'s forward: through `linear` in eval mode, its own while training."""

    def __init__(self, layer: torch.nn.Linear) -> None:
        self.layer = layer

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.layer.weight, self.layer.bias, training=self.layer.training)


def install(model: torch.nn.Module) -> int:
    """Route every plain float32 `nn.Linear` of `model` on a CPU (the LM head of a quantized model; every layer of a
    full-precision one) through `linear`; returns how many. Quantized layers are subclasses and keep their own."""
    count = 0
    for module in model.modules():
        if type(module) is torch.nn.Linear and _fits(module.weight):
            module.forward = _FewRowsForward(module)  # type: ignore[method-assign,assignment]
            count += 1
    return count


def _fits(weight: Any) -> bool:
    return isinstance(weight, torch.Tensor) and weight.dtype == torch.float32 and weight.device.type == "cpu"

"""The LoRA layers' training forward as one `addmm`: the same sum as peft's, with fewer passes over memory.

peft's forward of a LoRA layer with one adapter computes the base's output, then (over a 4-bit base)
clones it, multiplies `B(A(dropout(x)))` by the scaling into a new tensor and adds that into a third: up to
three passes over an output-sized tensor per layer, 210 layers per forward on the default model, each
memory-bound on a CPU. Here the scaling and the sum are one `torch.addmm(result, h, B.T, alpha=scaling)`,
the matmul's own epilogue, and the base's output is not copied: nothing edits it in place (the clone
guarded bitsandbytes' outputs against that on older PyTorch; autograd's version counter would raise if
anything did). In one `make bench-train` (2026-12-04, 2 cores with AVX512-BF16): 1.03x the input tokens/s of
peft's forward, 110-136 MB less peak RSS, the same losses (docs/performance.md, "Training, round three").

Only the plain case takes this path: training, adapters enabled and unmerged, one active vanilla LoRA
adapter (no DoRA), no per-row `adapter_names`, no autocast; anything else (evaluation in eval mode included)
runs peft's own forward. Not installed where FSDP or ZeRO-3 shard the parameters: there a module's own hooks
gather its weights, and this forward reads `B`'s weight without calling its module.
"""

from __future__ import annotations

from typing import Any

import torch


def install(model: torch.nn.Module) -> int:
    """Give every vanilla LoRA linear layer of `model` the lean training forward; returns how many."""
    from peft.tuners.lora import Linear as LoraLinear
    from peft.tuners.lora.bnb import Linear4bit, Linear8bitLt

    layers: list[Any] = [m for m in model.modules() if isinstance(m, LoraLinear | Linear4bit | Linear8bitLt)]
    for layer in layers:
        layer.forward = _LeanForward(layer, layer.forward)
    return len(layers)


class _LeanForward:
    """`layer`'s forward: base output plus scaling x B(A(dropout(x))) in one `addmm` where the case is plain,
    peft's `original` forward otherwise."""

    def __init__(self, layer: Any, original: Any) -> None:
        self.layer, self.original = layer, original

    def __call__(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        name = self.plain_adapter(args, kwargs)
        if name is None:
            return self.original(x, *args, **kwargs)
        layer = self.layer
        a, b = layer.lora_A[name].weight, layer.lora_B[name].weight
        result = layer.base_layer(x)
        h = torch.nn.functional.linear(layer.lora_dropout[name](layer._cast_input_dtype(x, a.dtype)), a)
        # a narrower base output (a bf16 base) is summed in the LoRA weights' dtype, as peft's Linear does
        total = result.reshape(-1, result.shape[-1]).to(a.dtype)
        total = torch.addmm(total, h.reshape(-1, h.shape[-1]), b.t(), alpha=layer.scaling[name])
        return total.view(result.shape).to(result.dtype)

    def plain_adapter(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
        """The one active vanilla adapter when this forward is the plain training case, else None."""
        layer = self.layer
        if args or kwargs or not layer.training or layer.disable_adapters or layer.merged:
            return None
        if torch.is_autocast_enabled() or len(layer.active_adapters) != 1:
            return None
        name = layer.active_adapters[0]
        return name if name in layer.lora_A and name not in layer.lora_variant else None

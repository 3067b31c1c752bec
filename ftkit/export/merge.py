"""Merging a LoRA into its base model, and proving that the merged model is the adapter.

The most reported merge failure is silent: a LoRA trained on a 4-bit base is merged into the
original weights, or into weights re-quantized after the merge, and the merged model behaves
unlike the adapter that was evaluated. ftkit never merges into quantized weights. It merges in
fp32 into one of two bases:

- `dequantized` (default for adapters trained on a quantized base): every weight that training
  saw quantized is replaced by dequant(quant(W)), computed with bitsandbytes from the original
  weights and checked byte for byte against what the quantized model holds. This is the base the
  adapter was trained and evaluated on, so the merged model reproduces the adapter.
- `original`: the full-precision weights; the merged model then differs from the evaluated
  adapter by the base's quantization error.

Then it measures, on held-out prompts: the merge's own exactness (merged vs the adapter on the
same fp32 base), the saved folder reloaded with plain transformers (in the output dtype), and the
gap to the adapter on the base it was trained on (4-bit/8-bit: that is the quantization gap).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from ftkit import lineage, runs
from ftkit.errors import FtkitError
from ftkit.export.verify import Agreement, Outputs, compare, describe, outputs_of, probes, require
from ftkit.models import LoadedModel, compute_dtype, load_model, load_tokenizer, resolve_source
from ftkit.recipe import ModelConfig
from ftkit.runs import write_json, write_manifest
from ftkit.training import adapters

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Largest |logit difference| accepted between the merged model and the adapter on the same fp32
# base: fp32 arithmetic in a different order; bf16/fp16 storage of the merged weights.
TOLERANCE = {"fp32": 1e-3, "bf16": 1.0, "fp16": 0.25}
VERIFICATION = "merge_verification.json"
BasePolicy = Literal["dequantized", "original"]


class MergeError(FtkitError):
    """A merge that would be wrong, or whose result does not match the adapter."""


def refuse_quantized(model: Any) -> None:
    """Merging into 4-/8-bit weights re-quantizes W + BA and loses most of the LoRA update."""
    import bitsandbytes as bnb

    quantized = [n for n, m in model.named_modules() if isinstance(m, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt))]
    if quantized or adapters.is_quantized(model):
        example = f" (e.g. {quantized[0]})" if quantized else ""
        raise MergeError(
            f"refusing to merge a LoRA into quantized weights{example}: the merged weights would be re-quantized "
            "and differ from the adapter; merge into a full-precision base (ftkit merge does this by default)"
        )


def quantized_modules(model: Any) -> dict[str, Any]:
    import bitsandbytes as bnb

    return {n: m for n, m in model.named_modules() if isinstance(m, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt))}


def dequantized_weight(weight: torch.Tensor, quantized: Any, name: str, loaded_as: torch.dtype) -> torch.Tensor:
    """dequant(quant(W)) as bitsandbytes stored it in `quantized`, in fp32.

    The weight is quantized again here with the module's own settings and the result is compared
    with the module's stored bytes: reading back a loaded module is not safe (on CPU,
    bitsandbytes repacks 4-bit weights for its kernel on the first forward, and dequantizing the
    repacked bytes yields garbage), and a mismatch means this is not the base training used.
    """
    import bitsandbytes.functional as F

    stored, home = quantized.weight, weight.device
    weight = weight.to(stored.device)  # quantized where bitsandbytes quantized it: its CUDA and CPU kernels differ
    if stored.dtype == torch.int8:  # LLM.int8(): row-wise absmax, quantized from fp16 after loading as `loaded_as`
        codes, scales, _ = F.int8_vectorwise_quant(weight.to(loaded_as).to(torch.float16))
        same = torch.equal(codes, stored.data) and torch.equal(scales, stored.SCB)
        result = F.int8_vectorwise_dequant(codes, scales)
    else:
        codes, state = F.quantize_4bit(
            weight.to(stored.quant_state.dtype),
            blocksize=stored.blocksize,
            compress_statistics=stored.compress_statistics,
            quant_type=stored.quant_type,
            quant_storage=stored.quant_storage,
        )
        same = codes.shape == stored.data.shape and torch.equal(codes, stored.data)
        result = F.dequantize_4bit(codes, state)
    if not same:
        raise MergeError(
            f"{name}: re-quantizing the original weight does not reproduce the quantized base's bytes; "
            "the base model differs from the one the adapter was trained on, or bitsandbytes changed its format"
        )
    return result.to(device=home, dtype=torch.float32)


def full_precision_base(cfg: ModelConfig, quantized: Any | None) -> tuple[LoadedModel, int]:
    """The fp32 base to merge into, and how many of its weights were replaced by dequant(quant(W)).

    `quantized` is the base as training loaded it (None to merge into the original weights); it
    must not have run a forward yet, so that its stored bytes are still in bitsandbytes' format.
    """
    base = load_model(cfg.model_copy(update={"quantization": "none", "compute_dtype": "float32"}))
    if quantized is None:
        return base, 0
    modules = dict(base.model.named_modules())
    replaced = quantized_modules(quantized)
    with torch.no_grad():
        for name, module in replaced.items():
            modules[name].weight.copy_(
                dequantized_weight(modules[name].weight, module, name, compute_dtype(cfg.compute_dtype))
            )
    return base, len(replaced)


@dataclass
class MergeResult:
    out: Path
    adapter: str
    base_source: str
    trained_quantization: str
    base_policy: str
    dequantized_weights: int
    dtype: str
    probes: int
    tolerance: float
    merge_exactness: Agreement  # merged (fp32, in memory) vs the adapter on the same fp32 base
    saved: Agreement  # the saved folder, reloaded with plain transformers, vs the adapter on that base
    quantization_gap: Agreement | None  # the saved model vs the adapter on the base it was trained on

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"out": str(self.out)}


def merge(
    target: Path,
    out: Path,
    *,
    dtype: str = "bf16",
    base_policy: BasePolicy = "dequantized",
    count: int = 8,
    max_new_tokens: int = 16,
    overwrite: bool = False,
) -> MergeResult:
    """Merge the adapter at `target` into a full-precision base, save it, and verify it (see module doc)."""
    adapter_dir = runs.adapter_folder(target)
    adapters.check(adapter_dir)
    cfg = lineage.base_config(adapter_dir)
    tokenizer = adapter_tokenizer(adapter_dir, cfg)
    probe = probes(adapter_dir, tokenizer, count)

    def run(model: Any) -> Outputs:
        return outputs_of(model, tokenizer, probe, max_new_tokens)

    with runs.output_folder(out, overwrite) as stage:
        # the base as trained, for a few probe forwards: its dequantized copies would only add memory beside the
        # full-precision base loaded next (bitsandbytes' own path gives the same numbers)
        as_trained = cfg.model_copy(update={"dequantized_base": False})
        quantized = load_model(as_trained).model if cfg.quantization != "none" else None
        base, replaced = full_precision_base(cfg, quantized if base_policy == "dequantized" else None)
        trained = run(adapters.load(quantized, adapter_dir, tokenizer=tokenizer)) if quantized is not None else None
        del quantized
        model = adapters.load(base.model, adapter_dir, tokenizer=tokenizer)
        reference = run(model)
        refuse_quantized(model)
        merged = model.merge_and_unload()
        exact = compare(run(merged), reference)
        require(exact, TOLERANCE["fp32"], "the merged fp32 model")
        saved = run(save_and_reload(merged.to(DTYPES[dtype]), tokenizer, stage))
        result = MergeResult(
            out=out,
            adapter=str(adapter_dir),
            base_source=cfg.source,
            trained_quantization=cfg.quantization,
            base_policy=base_policy if cfg.quantization != "none" else "original",
            dequantized_weights=replaced,
            dtype=dtype,
            probes=len(probe.full),
            tolerance=TOLERANCE[dtype],
            merge_exactness=exact,
            saved=compare(saved, reference),
            quantization_gap=compare(saved, trained) if trained else None,
        )
        require(result.saved, result.tolerance, f"the saved {dtype} model")
        write_json(stage / VERIFICATION, result.to_json())
        write_manifest(stage, {"lineage": lineage.read(adapter_dir) | {"merged": result.to_json()}})
    return result


def adapter_tokenizer(adapter_dir: Path, cfg: ModelConfig) -> Any:
    """The tokenizer saved with the adapter (it carries the trained chat template), else the base's."""
    from transformers import AutoTokenizer

    if (adapter_dir / "tokenizer_config.json").is_file():
        return AutoTokenizer.from_pretrained(adapter_dir)
    return load_tokenizer(resolve_source(cfg.source), cfg)


def save_and_reload(model: Any, tokenizer: Any, folder: Path) -> Any:
    """Save as safetensors with the tokenizer, then load back with plain transformers (fp32) to check what was
    written."""
    from transformers import AutoModelForCausalLM

    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, use_safetensors=True)


def render(result: MergeResult) -> str:
    """The verification, in words a user can act on."""
    lines = [
        f"merged {result.adapter} into {result.base_source} ({result.base_policy} fp32 base"
        + (
            f", {result.dequantized_weights} weights = dequant(quant(W)) as in {result.trained_quantization} training"
            if result.dequantized_weights
            else ""
        )
        + f"), saved as {result.dtype} safetensors: {result.out}",
        f"verified on {result.probes} held-out prompts:",
        describe("merge exactness (merged fp32 vs adapter, same base)", result.merge_exactness),
        describe(f"saved {result.dtype} folder (plain transformers) vs adapter", result.saved),
    ]
    if result.quantization_gap:
        lines.append(
            describe(f"vs the adapter on its {result.trained_quantization} training base", result.quantization_gap)
        )
    lines.append(f"verification: {result.out / VERIFICATION}")
    return "\n".join(lines)


def combine(
    folders: list[Path], weights: list[float], method: str, out: Path, *, density: float = 0.5, overwrite: bool = False
) -> Path:
    """Combine adapters of one base into a new adapter with peft's `add_weighted_adapter`.

    The result is an ordinary adapter folder (lineage: the first input's base, plus what was
    combined how), evaluated like any other with `ftkit eval --adapter`.
    """
    if len(folders) < 2 or len(folders) != len(weights):
        raise MergeError(
            "--adapters and --weights: need two or more adapters and one weight each "
            f"(got {len(folders)} and {len(weights)})"
        )
    dirs = [runs.adapter_folder(folder) for folder in folders]
    cfg = lineage.base_config(dirs[0])
    loaded = load_model(cfg.model_copy(update={"quantization": "none", "compute_dtype": "float32"}))
    model = loaded.model
    names = [f"input{i}" for i in range(len(dirs))]
    for name, folder in zip(names, dirs):
        model = adapters.load(model, folder, name=name)  # refuses an adapter of another base
    kwargs = {"density": density} if method in ("ties", "dare_ties", "dare_linear", "magnitude_prune") else {}
    try:
        model.add_weighted_adapter(names, weights, "default", combination_type=method, **kwargs)
    except ValueError as error:  # e.g. linear needs equal ranks and target modules
        raise MergeError(f"--method {method}: {error}") from None
    with runs.output_folder(out, overwrite) as stage:
        model.save_pretrained(stage, selected_adapters=["default"])
        loaded.tokenizer.save_pretrained(stage)
        record = lineage.read(dirs[0]) | {
            "combined": {
                "method": method,
                "density": density if kwargs else None,
                "inputs": [
                    {"adapter": str(d), "weight": w, "recipe": lineage.read(d).get("recipe")}
                    for d, w in zip(dirs, weights)
                ],
            },
        }
        record.pop("eval", None)
        write_manifest(stage, {"lineage": record})
    return out

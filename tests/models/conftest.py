"""Fixtures of the family matrix: each family's tiny model folder and one trained run shared by its
eval, merge, export and chat tests (built once per session: the matrix must stay cheap in CI)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.models.families import BY_NAME, Family, build_family, rows


@pytest.fixture(scope="session")
def family_dir(tmp_path_factory: pytest.TempPathFactory, default_model_dir: Path) -> Callable[[str], Path]:
    """The tiny model folder of a family, built on first use."""
    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            built[name] = build_family(BY_NAME[name], tmp_path_factory.mktemp(name), default_model_dir)
        return built[name]

    return get


def data_files(family: Family, folder: Path) -> dict[str, str]:
    """Chat families train on the customer-service conversations (most open with a system turn, many
    are multi-turn); base families on sentiment (prompt/completion + EOS)."""
    task, sizes = ("customer_service", (6, 2, 3)) if family.chat else ("sentiment", (8, 4, 4))
    files = {}
    for split, n in zip(("train", "validation", "test"), sizes):
        path = folder / f"{split}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows(task, split, n)), encoding="utf-8")
        files[split] = str(path)
    return files


@pytest.fixture(scope="session")
def family_recipe(tmp_path_factory: pytest.TempPathFactory, family_dir: Callable[[str], Path]) -> Callable[..., Path]:
    """A recipe for a family's tiny model: 2 steps of batch 2, its task's data."""

    def write(name: str, quantization: str = "none", **sections: dict[str, Any]) -> Path:
        family = BY_NAME[name]
        folder = tmp_path_factory.mktemp(f"{name}-{quantization}")
        task = {"name": "chat", "max_new_tokens": 4} if family.chat else {"name": "sentiment"}
        recipe: dict[str, Any] = {
            "model": {"source": str(family_dir(name)), "quantization": quantization, "compute_dtype": "float32"},
            "adapter": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"},
            "task": task,
            "data": data_files(family, folder) | {"max_length": 512},
            "train": {"max_steps": 2, "batch_size": 2, "learning_rate": 1e-2, "save_every": 2, "log_every": 1},
            "eval": {"batch_size": 4, "bootstrap": 100},
            "output": {"dir": str(folder / "run")},
        }
        for key, value in sections.items():
            recipe[key] = recipe.get(key, {}) | value
        path = folder / "recipe.yaml"
        path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
        return path

    return write


def shared_quantization(family: Family) -> str:
    """The run shared by eval/merge/export/chat: 4-bit (merge then goes through dequant(quant(W))), or
    full precision for families bitsandbytes cannot quantize."""
    return "none" if family.model_type == "gpt2" else "4bit"


@pytest.fixture(scope="session")
def family_run(family_recipe: Callable[..., Path]) -> Callable[[str], Path]:
    """One trained and evaluated run per family, trained on first use."""
    from ftkit.cli import main

    done: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in done:
            recipe = family_recipe(name, shared_quantization(BY_NAME[name]))
            assert main(["train", str(recipe)]) == 0
            done[name] = recipe.parent / "run"
        return done[name]

    return get


GGUF_ROWS: list[dict[str, Any]] = []


@pytest.fixture
def gguf_table() -> list[dict[str, Any]]:
    """Where test_gguf.py puts each family's llama.cpp measurements, printed as one table at the end."""
    return GGUF_ROWS


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The per-architecture table of llama.cpp against transformers (`make verify-export` prints it)."""
    if not GGUF_ROWS:
        return
    terminalreporter.section("GGUF in llama.cpp vs transformers (tests/models/test_gguf.py)")
    terminalreporter.write_line(
        "family   architecture dtype  tokenization  greedy equal  top-1 agree  max |Δlogit|  (bounds: top-1, |Δ|)"
    )
    for row in sorted(GGUF_ROWS, key=lambda r: (r["family"], r["dtype"])):
        terminalreporter.write_line(
            f"{row['family']:<8} {row['architecture']:<12} {row['dtype']:<6} "
            f"{'identical' if row['tokenizer_texts'] else '-':<13} {row['generations_equal']}/{row['generations']:<11} "
            f"{row['next_token_agreement']:<12.1%} {row['max_abs_logit_diff']:<13.3g} "
            f"(>= {row['min_agreement']:.0%}, <= {row['tolerance']:g})  [{row['judge']}]"
        )

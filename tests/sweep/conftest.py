"""A tiny sweep: the tiny Llama of tests/conftest.py, a few steps per trial, a two-dimension space."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

SPACE = "adapter.r: [2, 4]\ntrain.learning_rate: {low: 1.0e-3, high: 5.0e-2, log: true}\n"


@pytest.fixture
def sweep_recipe(write_recipe: Callable[..., Path]) -> Path:
    """4 steps per trial, a validation evaluation every 2 (so the pruner has two reports per trial)."""
    return write_recipe(
        "sweep",
        train={"max_steps": 4, "batch_size": 4, "eval_every": 2, "save_every": 2, "log_every": 2},
        eval={"batch_size": 8, "bootstrap": 200, "during_training_examples": 8},
    )


@pytest.fixture
def space(tmp_path: Path) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(SPACE, encoding="utf-8")
    return path

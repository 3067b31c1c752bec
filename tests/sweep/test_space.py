"""The space file: checked like a recipe, one line per problem, exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from ftkit.cli import main
from ftkit.recipe import RecipeError
from ftkit.sweep.space import load_space, override


def test_a_misspelt_key_fails_in_one_line_with_did_you_mean(
    sweep_recipe: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    space = tmp_path / "bad.yaml"
    space.write_text("adapter.r: [4, 8]\nadapter.rr: [4, 8]\n", encoding="utf-8")
    assert main(["sweep", str(sweep_recipe), "--space", str(space), "--dir", str(tmp_path / "s")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"ftkit: error: {space}:2: unknown key 'adapter.rr' (did you mean 'r'?)"]
    assert not (tmp_path / "s").exists()  # nothing was written


def test_values_are_checked_by_the_recipe_and_data_keys_are_refused(sweep_recipe: Path, tmp_path: Path) -> None:
    space = tmp_path / "bad.yaml"
    space.write_text(
        "train.learning_rate: {low: 1.0e-4, high: 2.0}\ndata.max_length: [64, 128]\nadapter.r: {low: 8, high: 4}\n",
        encoding="utf-8",
    )
    with pytest.raises(RecipeError) as caught:
        load_space(space, sweep_recipe)
    problems = caught.value.problems
    assert len(problems) == 3
    assert problems[0].startswith(f"{space}:1: train.learning_rate:") and "less than or equal to 1" in problems[0]
    assert problems[1].startswith(f"{space}:2: data.max_length:") and "tokenised once" in problems[1]
    assert problems[2] == f"{space}:3: adapter.r: low (8) must be below high (4)"


def test_grid_only_when_every_dimension_is_a_list(sweep_recipe: Path, space: Path, tmp_path: Path) -> None:
    assert not load_space(space, sweep_recipe).is_grid
    grid = tmp_path / "grid.yaml"
    grid.write_text("adapter.r: [2, 4]\nadapter.use_dora: [false, true]\n", encoding="utf-8")
    loaded = load_space(grid, sweep_recipe)
    assert loaded.is_grid and loaded.size == 4
    assert override("train.learning_rate", 1e-5) == "train.learning_rate=1.0e-05"  # YAML reads it back as a float

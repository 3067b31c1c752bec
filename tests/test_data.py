"""Reading data files in several formats, column mapping, and errors that name file and row."""

from __future__ import annotations

import json

import pytest
import yaml

from ftkit.data import DataError, load_examples, read_rows
from ftkit.recipe import load_recipe
from ftkit.tasks import get_task

ROWS = [{"review_body": "Loved the blender.", "stars": "positive"}, {"review_body": "Broke in a week.", "stars": "negative"}]


def _write(path, rows, fmt):
    import datasets

    table = datasets.Dataset.from_list(rows)
    {"jsonl": lambda: table.to_json(path), "csv": lambda: table.to_csv(path, index=False), "parquet": lambda: table.to_parquet(path)}[fmt]()
    return path


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_formats_read_the_same_rows(tmp_path, fmt) -> None:
    path = _write(tmp_path / f"data.{fmt}", ROWS, fmt)
    assert read_rows(path) == ROWS


def _recipe(tmp_path, train, columns=None):
    recipe = {"task": {"name": "sentiment"}, "data": {"train": str(train), "test": str(train), "columns": columns or {}}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return load_recipe(path)


def test_column_mapping_renames_file_columns(tmp_path) -> None:
    path = _write(tmp_path / "d.csv", ROWS, "csv")
    recipe = _recipe(tmp_path, path, {"text": "review_body", "label": "stars"})
    examples = load_examples(recipe, get_task(recipe.task, 64), "train")
    assert [e.reference for e in examples] == ["positive", "negative"]
    assert "Loved the blender." in examples[0].prompt


def test_mapping_to_a_missing_column_lists_the_columns(tmp_path) -> None:
    path = _write(tmp_path / "d.jsonl", ROWS, "jsonl")
    recipe = _recipe(tmp_path, path, {"text": "body"})
    with pytest.raises(DataError, match=r"data.columns.text maps to column 'body'.*\['review_body', 'stars'\]"):
        load_examples(recipe, get_task(recipe.task, 64), "train")


def test_bad_row_is_named_by_file_and_row(tmp_path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [{"text": "ok", "label": "positive"}, {"text": "", "label": "negative"}]))
    recipe = _recipe(tmp_path, path)
    with pytest.raises(DataError, match=r"d.jsonl:row 2: 'text' must be a non-empty string"):
        load_examples(recipe, get_task(recipe.task, 64), "train")


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.jsonl", b"", "the file is empty"),
        ("junk.jsonl", b'{"text": "a", "label": "positive"}\n{not json\n', "cannot read as json"),
        ("data.txt", b"hello", "unsupported file type '.txt'"),
    ],
)
def test_unreadable_files_are_clear_errors(tmp_path, name, content, message) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=message) as error:
        read_rows(path)
    assert str(path) in str(error.value)

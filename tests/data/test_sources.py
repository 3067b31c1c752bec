"""Reading data files in several formats, column mapping, and errors that name file and row."""

from __future__ import annotations

import json

import pytest
import yaml

from ftkit.data.sources import DataError, read_rows
from ftkit.data.splits import load_split
from ftkit.recipe import load_recipe
from ftkit.tasks import get_task

ROWS = [
    {"review_body": "Loved the blender.", "stars": "positive"},
    {"review_body": "Broke in a week.", "stars": "negative"},
]


def _write(path, rows, fmt):
    import datasets

    table = datasets.Dataset.from_list(rows)
    {
        "jsonl": lambda: table.to_json(path),
        "csv": lambda: table.to_csv(path, index=False),
        "parquet": lambda: table.to_parquet(path),
    }[fmt]()
    return path


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_formats_read_the_same_rows(tmp_path, fmt) -> None:
    path = _write(tmp_path / f"data.{fmt}", ROWS, fmt)
    assert read_rows(path) == ROWS


def _recipe(tmp_path, train, columns=None):
    recipe = {
        "task": {"name": "sentiment"},
        "data": {"train": str(train), "test": str(train), "columns": columns or {}},
    }
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return load_recipe(path)


def test_column_mapping_renames_file_columns(tmp_path) -> None:
    path = _write(tmp_path / "d.csv", ROWS, "csv")
    recipe = _recipe(tmp_path, path, {"text": "review_body", "label": "stars"})
    examples = load_split(recipe, get_task(recipe.task, 64), "train").examples
    assert [e.reference for e in examples] == ["positive", "negative"]
    assert "Loved the blender." in examples[0].prompt


def test_mapping_to_a_missing_column_lists_the_columns(tmp_path) -> None:
    path = _write(tmp_path / "d.jsonl", ROWS, "jsonl")
    recipe = _recipe(tmp_path, path, {"text": "body"})
    with pytest.raises(DataError, match=r"data.columns.text maps to column 'body'.*\['review_body', 'stars'\]"):
        load_split(recipe, get_task(recipe.task, 64), "train")


def test_bad_row_is_named_by_file_and_row(tmp_path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(
        "\n".join(json.dumps(r) for r in [{"text": "ok", "label": "positive"}, {"text": "", "label": "negative"}])
    )
    recipe = _recipe(tmp_path, path)
    with pytest.raises(DataError, match=r"d.jsonl:row 2: 'text' must be a non-empty string"):
        load_split(recipe, get_task(recipe.task, 64), "train")


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.jsonl", b"", "the file is empty"),
        ("junk.jsonl", b'{"text": "a", "label": "positive"}\n{not json\n', "junk.jsonl:line 2: cannot read as jsonl"),
        ("scalar.jsonl", b"3\n", "expected one JSON object per line"),
        ("latin1.jsonl", '{"text": "caf\u00e9"}'.encode("latin-1"), "not UTF-8"),
        ("data.txt", b"hello", "cannot tell the format from '.txt'; set data.format"),
    ],
)
def test_unreadable_files_are_clear_errors(tmp_path, name, content, message) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=message) as error:
        read_rows(path)
    assert str(path) in str(error.value)


def test_lines_format_parses_sst2_style_text_with_a_regex(tmp_path) -> None:
    path = tmp_path / "stsa.binary.dev"
    path.write_text("1 a gorgeous , witty film .\n\n0 it 's a mess .\n")
    recipe_path = tmp_path / "r.yaml"
    recipe_path.write_text(
        yaml.safe_dump(
            {
                "task": {"name": "sentiment"},
                "data": {
                    "train": str(path),
                    "test": str(path),
                    "format": "lines",
                    "line_pattern": r"^(?P<label>[01]) (?P<text>.*)$",
                },
            }
        )
    )
    recipe = load_recipe(recipe_path)
    examples = load_split(recipe, get_task(recipe.task, 64), "test").examples
    assert [e.reference for e in examples] == ["positive", "negative"]
    path.write_text("1 fine\nbroken line\n")
    with pytest.raises(DataError, match="stsa.binary.dev:line 2: does not match data.line_pattern"):
        load_split(recipe, get_task(recipe.task, 64), "test")


def test_tsv_is_read_with_tabs(tmp_path) -> None:
    path = tmp_path / "d.tsv"
    path.write_text("label\ttext_a\n1\tgood, really\n0\tbad\n")
    assert read_rows(path) == [{"label": 1, "text_a": "good, really"}, {"label": 0, "text_a": "bad"}]


def test_jsonl_keeps_strings_that_look_like_numbers(tmp_path) -> None:
    path = tmp_path / "qa.jsonl"
    path.write_text('{"question": "When?", "answer": ["in 1812", "1812"]}\n{"question": "Year?", "answer": "1812"}\n')
    assert read_rows(path)[1]["answer"] == "1812"

"""Reading the recipe's data files into task examples, and tokenising them once.

Files are read through `datasets` (jsonl/json, csv, parquet). Columns are renamed by the
recipe's `data.columns` mapping, rows become `Example`s through the task, and a bad row is an
error that names its file and row number instead of a silently dropped example.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftkit.errors import FtkitError
from ftkit.recipe import Recipe
from ftkit.tasks import Task
from ftkit.tasks.base import Encoded, Example, RowError

FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


class DataError(FtkitError):
    """A data file that cannot be read, or a row that cannot be used."""


def read_rows(path: Path) -> list[dict[str, Any]]:
    """All rows of a local data file, as dicts, in file order."""
    import datasets

    builder = FORMATS.get(path.suffix.lower())
    if builder is None:
        raise DataError(f"{path}: unsupported file type '{path.suffix}'; use one of {', '.join(FORMATS)}")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty")
    datasets.disable_progress_bars()
    try:
        table = datasets.load_dataset(builder, data_files=str(path), split="train", keep_in_memory=True)
    except Exception as error:  # datasets wraps parser errors in several exception types
        cause = error.__cause__ or error
        raise DataError(f"{path}: cannot read as {builder}: {str(cause).splitlines()[0][:200]}") from error
    return list(table)


def map_columns(rows: list[dict[str, Any]], columns: dict[str, str], path: Path) -> list[dict[str, Any]]:
    """Rename file columns to the task's names (`columns: {text: review_body}`)."""
    if not columns or not rows:
        return rows
    missing = {ours: theirs for ours, theirs in columns.items() if theirs not in rows[0]}
    if missing:
        ours, theirs = next(iter(missing.items()))
        raise DataError(
            f"{path}: data.columns.{ours} maps to column '{theirs}', which the file does not have; "
            f"its columns are {sorted(rows[0])}"
        )
    renamed = []
    for row in rows:
        out = {k: v for k, v in row.items() if k not in columns.values()}
        out.update({ours: row[theirs] for ours, theirs in columns.items()})
        renamed.append(out)
    return renamed


def load_examples(recipe: Recipe, task: Task, split: str, path: Path | None = None) -> list[Example]:
    """The examples of one split (`train`, `validation`, `test`), or of any file with the recipe's mapping."""
    path = path or getattr(recipe.data, split)
    if path is None:
        raise DataError(f"the recipe names no data.{split} file")
    rows = map_columns(read_rows(path), recipe.data.columns, path)
    try:
        return [task.make_example(row, f"{path}:row {i}") for i, row in enumerate(rows, start=1)]
    except RowError as error:
        raise DataError(str(error)) from None


@dataclass
class EncodedSplit:
    rows: list[Encoded]
    truncated: int  # examples whose prompt was cut to fit data.max_length
    tokens: int  # all tokens
    trained_tokens: int  # tokens that carry loss


def encode_examples(task: Task, tokenizer: Any, examples: list[Example]) -> EncodedSplit:
    """Tokenise every example once; an example with no trained token is an error, not a silent skip."""
    rows = []
    for example in examples:
        try:
            encoded = task.encode(example, tokenizer)
        except RowError as error:
            raise DataError(f"{example.where}: {error}") from None
        if encoded.trained_tokens == 0:
            raise DataError(f"{example.where}: no token of this example carries loss after truncation; raise data.max_length")
        rows.append(encoded)
    return EncodedSplit(
        rows=rows,
        truncated=sum(r.prompt_truncated for r in rows),
        tokens=sum(len(r.input_ids) for r in rows),
        trained_tokens=sum(r.trained_tokens for r in rows),
    )

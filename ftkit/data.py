"""Reading the recipe's data files into task examples, and tokenising them once.

Files are read through `datasets` (jsonl/json, csv, tsv, parquet), or line by line with a regex
(`data.format: lines`) for plain-text formats such as SST-2's `<label> <sentence>`. Columns are renamed by the
recipe's `data.columns` mapping, rows become `Example`s through the task, and a bad row is an
error that names its file and row number instead of a silently dropped example.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftkit.errors import FtkitError
from ftkit.recipe import DataConfig, Recipe
from ftkit.tasks import Task
from ftkit.tasks.base import Encoded, Example, RowError

EXTENSIONS = {".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet"}
BUILDERS = {"jsonl": ("json", {}), "json": ("json", {}), "csv": ("csv", {}), "tsv": ("csv", {"sep": "\t"}), "parquet": ("parquet", {})}


class DataError(FtkitError):
    """A data file that cannot be read, or a row that cannot be used."""


def read_rows(path: Path, cfg: DataConfig | None = None) -> list[dict[str, Any]]:
    """All rows of a local data file, as dicts, in file order."""
    fmt = cfg.format if cfg else "auto"
    if fmt == "auto":
        fmt = EXTENSIONS.get(path.suffix.lower(), "")
        if not fmt:
            raise DataError(
                f"{path}: cannot tell the format from '{path.suffix or 'no extension'}'; set data.format "
                f"({', '.join(BUILDERS)} or lines with data.line_pattern)"
            )
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty")
    if fmt == "lines":
        return _read_lines(path, re.compile(cfg.line_pattern or ""))
    if fmt in ("jsonl", "json"):
        return _read_json(path, fmt)
    return _read_with_datasets(path, fmt)


def _read_json(path: Path, fmt: str) -> list[dict[str, Any]]:
    """JSON Lines or a JSON list of objects, read with `json` rather than `datasets`.

    `datasets` infers one type per column, so a column that mixes strings and lists (QA rows with
    one or several answers) comes back with "1812" turned into the integer 1812. Reading with
    `json` keeps every value as written and gives exact line numbers for malformed lines.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    try:
        if fmt == "json":
            rows = json.loads(text)
            rows = rows.get("data", rows) if isinstance(rows, dict) else rows
        else:
            rows = []
            for number, line in enumerate(text.splitlines(), start=1):
                if line.strip():
                    where = number
                    rows.append(json.loads(line))
    except json.JSONDecodeError as error:
        line = where if fmt == "jsonl" else error.lineno
        raise DataError(f"{path}:line {line}: cannot read as {fmt}: {error.msg}") from None
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise DataError(f"{path}: expected {'one JSON object per line' if fmt == 'jsonl' else 'a JSON list of objects'}")
    return rows


def _read_with_datasets(path: Path, fmt: str) -> list[dict[str, Any]]:
    import datasets

    builder, options = BUILDERS[fmt]
    datasets.disable_progress_bars()
    try:
        table = datasets.load_dataset(builder, data_files=str(path), split="train", keep_in_memory=True, **options)
    except Exception as error:  # datasets wraps parser errors in several exception types
        cause = error.__cause__ or error
        raise DataError(f"{path}: cannot read as {fmt}: {str(cause).splitlines()[0][:200]}") from error
    return list(table)


def _read_lines(path: Path, pattern: re.Pattern[str]) -> list[dict[str, Any]]:
    """One row per non-empty line, its columns the named groups of data.line_pattern."""
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        match = pattern.match(line)
        if match is None:
            raise DataError(f"{path}:line {number}: does not match data.line_pattern {pattern.pattern!r}: {line[:80]!r}")
        rows.append(match.groupdict())
    return rows


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
    rows = map_columns(read_rows(path, recipe.data), recipe.data.columns, path)
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

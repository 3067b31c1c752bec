"""Where rows come from: local files in several formats, parallel line files, hub datasets.

JSON Lines / JSON are read with `json`; CSV / TSV / Parquet through `datasets`; SQuAD-format JSON
is flattened; plain text is parsed line by line with a regex (`data.format: lines`, for SST-2's
`<label> <sentence>`); parallel line files (`{text: t.txt, label: l.txt}`) give one column each.
Every problem names its file (and line, where there is one).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ftkit.errors import FtkitError
from ftkit.recipe import HUB_PREFIX, DataConfig

EXTENSIONS = {".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet"}
BUILDERS: dict[str, tuple[str, dict[str, str]]] = {
    "csv": ("csv", {}),
    "tsv": ("csv", {"sep": "\t"}),
    "parquet": ("parquet", {}),
}

Row = dict[str, Any]


class DataError(FtkitError):
    """A data file that cannot be read, or a row that cannot be used."""


def read_rows(source: str | dict[str, str] | Path, cfg: DataConfig | None = None) -> list[Row]:
    """All rows of a data source, as dicts, in file order."""
    if isinstance(source, dict):
        return _read_parallel(source)
    if str(source).startswith(HUB_PREFIX):
        return _read_hub(str(source)[len(HUB_PREFIX) :])
    path_text, _, key = str(source).partition("#")
    path = Path(path_text)
    fmt: str = cfg.format if cfg else "auto"
    if fmt == "auto":
        fmt = EXTENSIONS.get(path.suffix.lower(), "")
        if not fmt:
            raise DataError(
                f"{path}: cannot tell the format from '{path.suffix or 'no extension'}'; set data.format "
                "(jsonl, json, csv, tsv, parquet, squad, or lines with data.line_pattern)"
            )
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty")
    if fmt == "lines":
        return _read_lines(path, re.compile(cfg.line_pattern or "") if cfg else re.compile("(?P<text>.*)"))
    if fmt in ("jsonl", "json", "squad"):
        return _read_json(path, fmt, key)
    return _read_with_datasets(path, fmt)


def _read_hub(name: str) -> list[Row]:
    """A dataset from the Hugging Face hub, `name#split` (default split: train). Needs a network."""
    import datasets

    repo, _, split = name.partition("#")
    try:
        return list(datasets.load_dataset(repo, split=split or "train"))
    except Exception as error:  # offline, unknown name, or unknown split
        raise DataError(f"hub:{name}: cannot load from the hub: {str(error).splitlines()[0][:200]}") from error


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None


def _read_json(path: Path, fmt: str, key: str) -> list[Row]:
    """JSON Lines, a JSON list (or `file.json#key`), or SQuAD JSON, read with `json`.

    `datasets` infers one type per column, so a column that mixes strings and lists (QA rows with
    one or several answers) comes back with "1812" turned into the integer 1812. Reading with
    `json` keeps every value as written and gives exact line numbers for malformed lines.
    """
    text = _read_text(path)
    if fmt == "jsonl":
        numbered = enumerate(text.splitlines(), start=1)
        rows: Any = [_loads(content, path, fmt, line) for line, content in numbered if content.strip()]
    else:
        rows = _loads(text, path, fmt)
    if fmt == "squad":
        return _flatten_squad(rows, path)
    if key:
        if not isinstance(rows, dict) or key not in rows:
            found = sorted(rows) if isinstance(rows, dict) else "a list"
            raise DataError(f"{path}#{key}: no top-level key '{key}' (the file has {found})")
        rows = rows[key]
    if not isinstance(rows, list):
        raise DataError(f"{path}: expected a list of rows; for a JSON object use {path.name}#KEY to pick one")
    if rows and all(isinstance(row, list) for row in rows):
        rows = [{str(i): value for i, value in enumerate(row)} for row in rows]  # map columns by position: "0", "1"
    if not all(isinstance(row, dict) for row in rows):
        raise DataError(
            f"{path}: expected {'one JSON object per line' if fmt == 'jsonl' else 'a JSON list of objects'}"
        )
    return rows


def _loads(text: str, path: Path, fmt: str, line: int = 0) -> Any:
    """`json.loads`; a malformed document names its file and line (`line`: the JSON Lines line `text` is)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(f"{path}:line {line or error.lineno}: cannot read as {fmt}: {error.msg}") from None


def _flatten_squad(document: Any, path: Path) -> list[Row]:
    """SQuAD v1.1 JSON (data -> paragraphs -> qas) as flat rows, one per entry of `qas`, with the
    paragraph's `context` added; the keys stay SQuAD's own (a task converts them to its columns)."""
    try:
        return [
            {**qa, "context": paragraph["context"]}
            for article in document["data"]
            for paragraph in article["paragraphs"]
            for qa in paragraph["qas"]
        ]
    except (KeyError, TypeError) as error:
        raise DataError(f"{path}: not SQuAD format (data -> paragraphs -> qas): missing {error}") from None


def _read_with_datasets(path: Path, fmt: str) -> list[Row]:
    import datasets

    builder, options = BUILDERS[fmt]
    datasets.disable_progress_bars()
    try:
        table = datasets.load_dataset(builder, data_files=str(path), split="train", keep_in_memory=True, **options)
    except Exception as error:  # datasets wraps parser errors in several exception types
        cause = error.__cause__ or error
        raise DataError(f"{path}: cannot read as {fmt}: {str(cause).splitlines()[0][:200]}") from error
    return list(table)


def _read_lines(path: Path, pattern: re.Pattern[str]) -> list[Row]:
    """One row per non-empty line, its columns the named groups of data.line_pattern."""
    rows = []
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        match = pattern.match(line)
        if match is None:
            raise DataError(
                f"{path}:line {number}: does not match data.line_pattern {pattern.pattern!r}: {line[:80]!r}"
            )
        rows.append(match.groupdict())
    return rows


def _read_parallel(files: dict[str, str]) -> list[Row]:
    """Parallel line files (one row per line, one file per column), e.g. TweetEval's text and labels."""
    columns = {column: _read_text(Path(path)).rstrip("\n").split("\n") for column, path in files.items()}
    sizes = {column: len(lines) for column, lines in columns.items()}
    if len(set(sizes.values())) > 1:
        raise DataError(f"parallel files have different numbers of lines: {sizes}")
    return [dict(zip(columns, values)) for values in zip(*columns.values())]

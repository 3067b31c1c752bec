"""From rows to a split's examples: column mapping, the task's row conversions, content-hash splits.

Rows are renamed by `data.columns`, converted by the task (`Task.convert_row`: alpaca, ShareGPT,
... are the task's business) and each becomes an `Example` through the task. A bad row is an error
naming its file and row, or, with `data.bad_rows: skip`, a counted skip. Missing validation/test
files can be carved out of the training file by a hash of each row's content (`data.split`), so
the same data splits the same way on every machine.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from ftkit.data.sources import DataError, Row, read_rows
from ftkit.errors import RowError
from ftkit.recipe import Recipe, SplitConfig
from ftkit.tasks import Example, Task


def map_columns(rows: list[Row], columns: dict[str, str], source: str) -> list[Row]:
    """Rename file columns to the task's names (`columns: {text: review_body}`)."""
    if not columns or not rows:
        return rows
    missing = {ours: theirs for ours, theirs in columns.items() if theirs not in rows[0]}
    if missing:
        ours, theirs = next(iter(missing.items()))
        raise DataError(
            f"{source}: data.columns.{ours} maps to column '{theirs}', which the file does not have; "
            f"its columns are {sorted(rows[0])}"
        )
    renamed = []
    for row in rows:
        out = {k: v for k, v in row.items() if k not in columns.values()}
        out.update({ours: row[theirs] for ours, theirs in columns.items()})
        renamed.append(out)
    return renamed


def _row_key(row: Row) -> str:
    return json.dumps(row, sort_keys=True, ensure_ascii=False, default=str)


def hash_split(rows: list[tuple[str, Row]], cfg: SplitConfig) -> dict[str, list[tuple[str, Row]]]:
    """Assign each row to train/validation/test by a seeded hash of its content.

    The assignment depends only on the row itself and the seed, never on file order, Python's hash
    randomisation or the machine, so the same recipe and files always give byte-identical splits.
    """
    out: dict[str, list[tuple[str, Row]]] = {"train": [], "validation": [], "test": []}
    for where, row in rows:
        digest = hashlib.sha256(f"{cfg.seed}\x00{_row_key(row)}".encode()).digest()
        unit = int.from_bytes(digest[:8], "big") / 2**64
        name = "test" if unit < cfg.test else "validation" if unit < cfg.test + cfg.validation else "train"
        out[name].append((where, row))
    return out


@dataclass
class LoadedSplit:
    name: str
    source: str
    examples: list[Example]
    skipped: list[str] = field(default_factory=list)  # "file:row N: problem" for rows dropped by bad_rows: skip


def _rows_of(recipe: Recipe, split: str, path: Path | None) -> tuple[str, list[tuple[str, Row]]]:
    """The (where, row) pairs of a split, from its own file or carved out of train by hash."""
    data = recipe.data
    source = str(path) if path else getattr(data, split)
    carved = source is None
    if carved:
        if not data.has_split(split):
            raise DataError(f"the recipe names no data.{split} file and data.split gives it no share")
        source = data.train
    label = source if isinstance(source, str) else " + ".join(source.values())
    rows = map_columns(read_rows(source, data), data.columns, label)
    pairs = [(f"{label}:row {i}", row) for i, row in enumerate(rows, start=1)]
    if data.split and path is None and (carved or split == "train"):
        pairs = hash_split(pairs, data.split)[split]
    return label, pairs


def load_split(recipe: Recipe, task: Task, split: str, path: Path | None = None) -> LoadedSplit:
    """The examples of one split (`train`, `validation`, `test`), or of any file with the recipe's mapping."""
    source, pairs = _rows_of(recipe, split, path)
    loaded = LoadedSplit(name=split, source=source, examples=[])
    for where, row in pairs:
        try:
            loaded.examples.append(task.make_example(task.convert_row(row), where))
        except RowError as error:
            if recipe.data.bad_rows == "fail":
                raise DataError(f"{error} (set data.bad_rows: skip to drop such rows)") from None
            loaded.skipped.append(str(error))
    if not loaded.examples:
        raise DataError(f"{source}: no usable rows in split '{split}'")
    return loaded

"""Reading the recipe's data into task examples: formats, column mapping, splits, overlap, tokenising.

Sources are local files: JSON Lines / JSON (read with `json`), CSV / TSV / Parquet (through
`datasets`), SQuAD-format JSON, plain text parsed line by line with a regex (`data.format:
lines`, for SST-2's `<label> <sentence>`), or parallel line files (`{text: t.txt, label: l.txt}`).
Rows are renamed by `data.columns`, common shapes (alpaca, ShareGPT, user/assistant columns) are
converted to the task's columns, and each row becomes an `Example` through the task. A bad row is
an error naming its file and row, or, with `data.bad_rows: skip`, a counted skip.

Missing validation/test files can be carved out of the training file by a hash of each row's
content (`data.split`), so the same data splits the same way on every machine, and every
held-out split is checked for exact and near duplicates of training rows before training.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftkit.recipe import HUB_PREFIX, DataConfig, Recipe, SplitConfig
from ftkit.tasks import Task
from ftkit.data.encoding import Encoded
from ftkit.errors import FtkitError, RowError
from ftkit.tasks.base import Example

EXTENSIONS = {".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet"}
BUILDERS = {"csv": ("csv", {}), "tsv": ("csv", {"sep": "\t"}), "parquet": ("parquet", {})}
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "bot": "assistant", "system": "system"}

Row = dict[str, Any]


class DataError(FtkitError):
    """A data file that cannot be read, or a row that cannot be used."""


# --- reading -------------------------------------------------------------------------------


def read_rows(source: str | dict[str, str] | Path, cfg: DataConfig | None = None) -> list[Row]:
    """All rows of a data source, as dicts, in file order."""
    if isinstance(source, dict):
        return _read_parallel(source)
    if str(source).startswith(HUB_PREFIX):
        return _read_hub(str(source)[len(HUB_PREFIX) :])
    path_text, _, key = str(source).partition("#")
    path = Path(path_text)
    fmt = cfg.format if cfg else "auto"
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
    line = 0
    try:
        if fmt == "jsonl":
            rows = []
            for line, content in enumerate(text.splitlines(), start=1):
                if content.strip():
                    rows.append(json.loads(content))
        else:
            rows = json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(f"{path}:line {line or error.lineno}: cannot read as {fmt}: {error.msg}") from None
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
        raise DataError(f"{path}: expected {'one JSON object per line' if fmt == 'jsonl' else 'a JSON list of objects'}")
    return rows


def _flatten_squad(document: Any, path: Path) -> list[Row]:
    """SQuAD v1.1 JSON (data -> paragraphs -> qas) as flat {context, question, answer} rows."""
    try:
        return [
            {"context": paragraph["context"], "question": qa["question"], "answer": [a["text"] for a in qa["answers"]], "id": qa.get("id")}
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
            raise DataError(f"{path}:line {number}: does not match data.line_pattern {pattern.pattern!r}: {line[:80]!r}")
        rows.append(match.groupdict())
    return rows


def _read_parallel(files: dict[str, str]) -> list[Row]:
    """Parallel line files (one row per line, one file per column), e.g. TweetEval's text and labels."""
    columns = {column: _read_text(Path(path)).rstrip("\n").split("\n") for column, path in files.items()}
    sizes = {column: len(lines) for column, lines in columns.items()}
    if len(set(sizes.values())) > 1:
        raise DataError(f"parallel files have different numbers of lines: {sizes}")
    return [dict(zip(columns, values)) for values in zip(*columns.values())]


# --- rows to examples ------------------------------------------------------------------------


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


def to_task_columns(row: Row, task_columns: tuple[str, ...]) -> Row:
    """Convert common dataset shapes to what the task reads.

    ShareGPT (`conversations` of `from`/`value`) and plain `user`/`assistant` columns become chat
    `messages`; alpaca (`instruction`, `input`, `output`) becomes a chat exchange or a QA pair.
    """
    if "messages" in task_columns and "messages" not in row:
        if isinstance(row.get("conversations"), list):
            turns = [t for t in row["conversations"] if isinstance(t, dict)]
            return row | {"messages": [{"role": SHAREGPT_ROLES.get(str(t.get("from")), str(t.get("from"))), "content": t.get("value")} for t in turns]}
        user, reply = _alpaca(row) if "instruction" in row else (row.get("user"), row.get("assistant"))
        if user is not None and reply is not None:
            system = [{"role": "system", "content": row["system"]}] if row.get("system") else []
            return row | {"messages": [*system, {"role": "user", "content": user}, {"role": "assistant", "content": reply}]}
    if "question" in task_columns and "question" not in row and "instruction" in row:
        question, answer = _alpaca(row)
        return row | {"question": question, "answer": answer}
    return row


def _alpaca(row: Row) -> tuple[Any, Any]:
    extra = row.get("input")
    prompt = f"{row['instruction']}\n\n{extra}" if isinstance(extra, str) and extra.strip() else row["instruction"]
    return prompt, row.get("output")


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
            loaded.examples.append(task.make_example(to_task_columns(row, task.columns), where))
        except RowError as error:
            if recipe.data.bad_rows == "fail":
                raise DataError(f"{error} (set data.bad_rows: skip to drop such rows)") from None
            loaded.skipped.append(str(error))
    if not loaded.examples:
        raise DataError(f"{source}: no usable rows in split '{split}'")
    return loaded


# --- overlap between train and held-out splits ------------------------------------------------


def normalise(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def _shingles(text: str) -> set[str]:
    words = text.split()
    return {" ".join(words[i : i + 3]) for i in range(max(1, len(words) - 2))}


@dataclass
class Overlap:
    split: str
    exact: list[tuple[Example, Example]]
    near: list[tuple[Example, Example, float]]


def find_overlap(train: list[Example], held_out: list[Example], split: str, threshold: float) -> Overlap:
    """Held-out examples whose input duplicates a training input, exactly or nearly.

    Exact: equal after lower-casing and dropping punctuation. Near: word-trigram Jaccard at or
    above `threshold`, found through an inverted index so it stays fast on thousands of rows.
    """
    exact_index: dict[str, Example] = {}
    index: dict[str, list[int]] = defaultdict(list)
    train_shingles = []
    for i, example in enumerate(train):
        text = normalise(example.content)
        exact_index.setdefault(text, example)
        shingles = _shingles(text)
        train_shingles.append(shingles)
        for shingle in shingles:
            index[shingle].append(i)
    result = Overlap(split, [], [])
    for example in held_out:
        text = normalise(example.content)
        if text in exact_index:
            result.exact.append((example, exact_index[text]))
            continue
        shingles = _shingles(text)
        shared = Counter(i for shingle in shingles for i in index.get(shingle, ()))
        best = max(((n / len(shingles | train_shingles[i]), i) for i, n in shared.items()), default=(0.0, -1))
        if best[0] >= threshold:
            result.near.append((example, train[best[1]], best[0]))
    return result


# --- tokenising ---------------------------------------------------------------------------------


@dataclass
class EncodedSplit:
    rows: list[Encoded]
    examples: list[Example]  # the examples encoded, aligned with rows
    skipped: list[str]  # "file:row N: problem" for examples dropped under data.bad_rows: skip
    truncated: int  # examples whose prompt was cut to fit data.max_length
    tokens: int  # all tokens
    trained_tokens: int  # tokens that carry loss


def encode_examples(task: Task, tokenizer: Any, examples: list[Example], *, skip_bad: bool = False) -> EncodedSplit:
    """Tokenise every example once.

    An example that cannot be encoded (a completion longer than data.max_length) or that has no
    trained token is an error naming its row, or, with `skip_bad`, a counted skip; never silent.
    """
    rows, kept, skipped = [], [], []
    for example in examples:
        try:
            encoded = task.encode(example, tokenizer)
            if encoded.trained_tokens == 0:
                raise RowError("no token of this example carries loss after truncation; raise data.max_length")
        except RowError as error:
            if not skip_bad:
                raise DataError(f"{example.where}: {error}") from None
            skipped.append(f"{example.where}: {error}")
            continue
        rows.append(encoded)
        kept.append(example)
    return EncodedSplit(
        rows=rows,
        examples=kept,
        skipped=skipped,
        truncated=sum(r.prompt_truncated for r in rows),
        tokens=sum(len(r.input_ids) for r in rows),
        trained_tokens=sum(r.trained_tokens for r in rows),
    )

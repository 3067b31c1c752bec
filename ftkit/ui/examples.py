"""The Examples page's data: a run's `predictions.jsonl`, filtered, searched and cut into pages.

Which examples an adapter fixed or broke is decided exactly as report.md decides it (its
`_changed_examples`): by the per-example scores recorded under "scores" (`Task.example_scores`),
fixed when the adapter's is higher than the base's, broken when lower, in report.md's order (largest
change first). Ties are "both right" when both scores are perfect (1), else "both wrong". The file
is read one line at a time and only the rows that match are kept (to order them).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

BASE = "base"
Kind = Literal["fixed", "broken", "both right", "both wrong"]
KINDS: tuple[Kind, ...] = ("fixed", "broken", "both right", "both wrong")
RESERVED = {"where", "input", "reference", "scores"}
PAGE = 50


@dataclass
class Row:
    index: int
    where: str
    input: Any
    reference: Any
    predictions: dict[str, Any]  # system -> prediction, base first
    kind: Kind | None  # None when the file records no scores (written before ftkit 0.2.0)
    change: float


@dataclass
class Page:
    rows: list[Row]
    matched: int
    counts: dict[str, int]
    scored: bool
    systems: list[str]


def kind_of(base: float, adapter: float) -> Kind:
    if adapter > base:
        return "fixed"
    if adapter < base:
        return "broken"
    return "both right" if base >= 1.0 else "both wrong"


def _rows(path: Path, system: str | None) -> Iterator[Row]:
    with path.open(encoding="utf-8") as handle:
        for index, line in enumerate(handle):
            try:
                data = json.loads(line)
            except ValueError:
                continue
            if not isinstance(data, dict):
                continue
            predictions = {k: v for k, v in data.items() if k not in RESERVED}
            chosen = system if system in predictions else next((k for k in predictions if k != BASE), None)
            recorded = data.get("scores")
            scores: dict[str, Any] = recorded if isinstance(recorded, dict) else {}
            kind, change = None, 0.0
            if chosen is not None and isinstance(scores.get(BASE), (int, float)) and chosen in scores:
                kind, change = kind_of(scores[BASE], scores[chosen]), scores[chosen] - scores[BASE]
            yield Row(
                index,
                str(data.get("where", index)),
                data.get("input"),
                data.get("reference"),
                predictions,
                kind,
                change,
            )


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def matches(row: Row, query: str) -> bool:
    """A case-insensitive search over the input, reference and every prediction."""
    haystack = " ".join(_text(v) for v in (row.input, row.reference, *row.predictions.values()))
    return query.casefold() in haystack.casefold()


def page(path: Path, *, kind: str | None, query: str, number: int, system: str | None = None) -> Page:
    """Page `number` (from 0) of the rows of `kind` (or all) that contain `query`.

    Fixed and broken rows come largest change first, as in report.md; the others in file order.
    """
    counts: dict[str, int] = dict.fromkeys(KINDS, 0)
    kept: list[Row] = []
    systems: list[str] = []
    scored = False
    for row in _rows(path, system):
        systems = systems or list(row.predictions)
        if row.kind is not None:
            scored = True
            counts[row.kind] += 1
        if (kind in (None, "", "all") or row.kind == kind) and (not query or matches(row, query)):
            kept.append(row)
    if kind in ("fixed", "broken"):
        kept.sort(key=lambda row: abs(row.change), reverse=True)  # stable: ties keep file order, as report.md
    start = max(number, 0) * PAGE
    return Page(kept[start : start + PAGE], len(kept), counts, scored, systems)

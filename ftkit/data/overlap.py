"""Held-out rows that duplicate training rows, exactly or nearly: numbers on them would be inflated."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass

from ftkit.tasks import Example


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

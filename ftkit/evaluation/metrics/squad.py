"""SQuAD-style exact match and token F1 for extractive/short-answer QA (local evaluate module).

Follows the official SQuAD v2.0 evaluation script: normalise (lowercase, strip
punctuation, drop the articles a/an/the, collapse whitespace), then score
against every acceptable answer and keep the best. Two deliberate, documented
extensions for non-English text: NFKC Unicode normalisation first, and *all*
Unicode punctuation is stripped (the official script only strips ASCII
punctuation), as in the MLQA evaluation script. ASCII inputs score exactly as
with the official script.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from collections.abc import Sequence

import evaluate

from ._text import References, as_reference_lists, check_lengths, mean, metric_info, nfkc, text_features

_DESCRIPTION = """SQuAD exact match and token-overlap F1, best over the acceptable
answers of each example, averaged over examples. Scores are in 0..1 (NOT 0..100
as in the official script). An empty normalised prediction or answer gets
F1 = EM = 1 if both are empty, else 0 (SQuAD v2.0 rule); an example with an
empty answer list is treated as unanswerable (answer "")."""

_CITATION = """@inproceedings{rajpurkar-etal-2018-know, title={Know What You Don{'}t Know:
Unanswerable Questions for {SQ}u{AD}}, author={Rajpurkar, Pranav and Jia, Robin and Liang, Percy},
booktitle={ACL}, year={2018}}"""

_INPUTS = """
Args:
    predictions (list[str]): predicted answers.
    references (list[list[str]] or list[str]): acceptable answers per example.
Returns:
    {"exact_match": float in 0..1, "f1": float in 0..1}
"""

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_ASCII_PUNCT = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD answer normalisation (see module docstring for the Unicode extensions)."""
    text = nfkc(text).lower()
    text = "".join(ch for ch in text if ch not in _ASCII_PUNCT and not unicodedata.category(ch).startswith("P"))
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _token_f1(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    """Bag-of-tokens F1 exactly as the official SQuAD v2.0 script computes it."""
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    overlap = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(pred_tokens)
    recall = overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def score_one(prediction: str, answers: Sequence[str]) -> tuple[float, float]:
    """(exact_match, f1) of one prediction, each maximised over the answers."""
    pred = normalize_answer(prediction)
    golds = [normalize_answer(a) for a in answers] or [""]
    em = max(float(pred == g) for g in golds)
    f1 = max(_token_f1(pred.split(), g.split()) for g in golds)
    return em, f1


def example_scores(predictions: Sequence[str], references: Sequence[References]) -> dict[str, list[float]]:
    """Per-example {"exact_match": [...], "f1": [...]}; their means are the corpus scores."""
    check_lengths(predictions, references)
    answers = as_reference_lists(references, allow_empty=True)
    pairs = [score_one(p, refs) for p, refs in zip(predictions, answers)]
    return {"exact_match": [em for em, _ in pairs], "f1": [f1 for _, f1 in pairs]}


class Squad(evaluate.Metric):
    """SQuAD exact match / F1 in 0..1."""

    def _info(self) -> evaluate.MetricInfo:
        url = "https://rajpurkar.github.io/SQuAD-explorer/"
        return metric_info(_DESCRIPTION, _CITATION, _INPUTS, text_features(), reference_urls=[url])

    def _compute(self, predictions: list[str], references: list[References]) -> dict[str, float]:
        return {key: mean(values) for key, values in example_scores(predictions, references).items()}

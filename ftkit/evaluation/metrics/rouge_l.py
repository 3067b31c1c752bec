"""ROUGE-L F-measure via Google's rouge-score, with a Unicode-aware tokenizer (local evaluate module).

rouge-score's default tokenizer lowercases and then replaces everything that is
not ``[a-z0-9]`` with spaces, so non-English text silently scores 0 (or
garbage): "café" becomes "caf", Cyrillic/Greek/CJK text vanishes entirely.
We keep rouge-score's LCS arithmetic and swap in :class:`UnicodeTokenizer`.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

import evaluate
from rouge_score import rouge_scorer

from ._text import References, as_reference_lists, check_lengths, mean, metric_info, nfkc, text_features

_DESCRIPTION = """ROUGE-L (longest common subsequence) F-measure from rouge-score, best over
the references of each example, averaged over examples. Range 0..1. No
stemming. Tokens: lowercased runs of Unicode letters/digits/combining marks;
each Han/kana character is its own token (those scripts have no spaces)."""

_CITATION = """@inproceedings{lin-2004-rouge, title={{ROUGE}: A Package for Automatic Evaluation
of Summaries}, author={Lin, Chin-Yew}, booktitle={Text Summarization Branches Out}, year={2004}}"""

_INPUTS = """
Args:
    predictions (list[str]): generated texts.
    references (list[list[str]] or list[str]): one or more references per example.
Returns:
    {"rouge_l": float in 0..1}
"""

# Han ideographs (+ extensions/compatibility) and Hiragana/Katakana.
_CJK_RANGES = ((0x3040, 0x30FF), (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0x20000, 0x2FA1F))


def _is_cjk(ch: str) -> bool:
    code = ord(ch)
    return any(lo <= code <= hi for lo, hi in _CJK_RANGES)


class UnicodeTokenizer:
    """rouge-score tokenizer protocol (``tokenize(text) -> list[str]``) that keeps
    non-ASCII words instead of deleting them.

    Letters, digits and combining marks (needed by e.g. Devanagari) form words;
    anything else separates them. Han/kana characters are single tokens.
    """

    def tokenize(self, text: str) -> list[str]:
        tokens: list[str] = []
        word: list[str] = []
        for ch in nfkc(text).lower():
            if _is_cjk(ch) or unicodedata.category(ch)[0] not in "LNM":
                if word:
                    tokens.append("".join(word))
                    word = []
                if _is_cjk(ch):
                    tokens.append(ch)
            else:
                word.append(ch)
        if word:
            tokens.append("".join(word))
        return tokens


def _scorer() -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False, tokenizer=UnicodeTokenizer())


def example_scores(predictions: Sequence[str], references: Sequence[References]) -> list[float]:
    """Per-example ROUGE-L F-measure (best reference); the mean is the corpus score."""
    check_lengths(predictions, references)
    scorer = _scorer()
    return [
        float(scorer.score_multi(refs, pred)["rougeL"].fmeasure)
        for pred, refs in zip(predictions, as_reference_lists(references))
    ]


class RougeL(evaluate.Metric):
    """Mean ROUGE-L F-measure with multi-reference max and Unicode tokenisation."""

    def _info(self) -> evaluate.MetricInfo:
        url = "https://github.com/google-research/google-research/tree/master/rouge"
        return metric_info(_DESCRIPTION, _CITATION, _INPUTS, text_features(), codebase_urls=[url])

    def _compute(self, predictions: list[str], references: list[References]) -> dict[str, float]:
        return {"rouge_l": mean(example_scores(predictions, references))}

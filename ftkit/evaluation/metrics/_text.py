"""Helpers shared by the ftkit text metric modules.

This file sits next to the metric scripts on purpose: when ``evaluate.load``
imports a local script it copies the script *and its direct relative imports*
(``from ._text import ...``) into its dynamic-modules cache. Only direct
imports are followed, so this module must not use relative imports itself,
and helpers must be imported with ``from ._text import name`` (evaluate's
import scanner does not recognise ``from . import _text``).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from typing import TypeAlias

import datasets
import evaluate

#: One reference string, or several acceptable references, for one example.
References: TypeAlias = str | Sequence[str]

SKLEARN_CITATION = """@article{scikit-learn, title={Scikit-learn: Machine Learning in {P}ython},
author={Pedregosa, F. and others}, journal={JMLR}, volume={12}, pages={2825--2830}, year={2011}}"""


def metric_info(
    description: str,
    citation: str,
    inputs: str,
    features: datasets.Features | list[datasets.Features],
    **urls: list[str],
) -> evaluate.MetricInfo:
    """What every ftkit metric's ``_info`` returns: its documentation and input schema(s).

    ``urls`` are ``reference_urls`` and/or ``codebase_urls``.
    """
    return evaluate.MetricInfo(
        description=description, citation=citation, inputs_description=inputs, features=features, **urls
    )


def label_features() -> datasets.Features:
    """Input schema for metrics over string class labels: one prediction, one reference."""
    return datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")})


def text_features() -> list[datasets.Features]:
    """Input schemas for prediction-vs-reference(s) text metrics.

    Single-string references are listed first: evaluate picks the first schema
    the first example fits, and a plain string would also "fit" a sequence.
    """
    several = {"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}
    return [label_features(), datasets.Features(several)]


def mean(values: Sequence[float]) -> float:
    """The corpus score of a metric whose per-example scores average to it."""
    return sum(values) / len(values)


def check_lengths(predictions: Sequence[object], references: Sequence[object]) -> None:
    """Fail early (with a useful message) on empty or misaligned inputs."""
    if len(predictions) != len(references):
        raise ValueError(f"got {len(predictions)} predictions but {len(references)} references")
    if len(predictions) == 0:
        raise ValueError("need at least one example")


def as_reference_lists(references: Sequence[References], allow_empty: bool = False) -> list[list[str]]:
    """Turn each example's reference(s) into a list of strings.

    Empty lists are rejected unless ``allow_empty`` (SQuAD v2 uses them for
    unanswerable questions); other metrics have no sensible score without one.
    """
    out: list[list[str]] = []
    for i, refs in enumerate(references):
        refs_list = [refs] if isinstance(refs, str) else list(refs)
        if not refs_list and not allow_empty:
            raise ValueError(f"example {i} has no reference")
        out.append(refs_list)
    return out


def nfkc(text: str) -> str:
    """Unicode compatibility normalisation, so that composed/decomposed accents
    and full-width forms of the same text compare equal."""
    return unicodedata.normalize("NFKC", text)

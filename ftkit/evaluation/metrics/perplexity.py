"""Perplexity from per-example summed negative log-likelihoods (local evaluate module).

The model forward pass happens elsewhere (it needs the model and tokenizer);
this module only aggregates, so it is cheap, offline and batch-friendly:
summing NLL and token counts across batches before dividing gives the
token-weighted perplexity, not a (biased) mean of per-example perplexities.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import datasets
import evaluate
import numpy as np

from ._text import metric_info

_DESCRIPTION = """Token-level perplexity exp(sum(nll) / sum(num_tokens)), where nll is each
example's summed negative log-likelihood in nats (natural log) and num_tokens
the number of scored tokens. Also returns mean_nll (nats/token) and the token
total."""

_CITATION = """@article{jelinek1977perplexity, title={Perplexity---a measure of the difficulty of
speech recognition tasks}, author={Jelinek, F. and Mercer, R. L. and Bahl, L. R. and Baker, J. K.},
journal={JASA}, volume={62}, number={S1}, pages={S63}, year={1977}}"""

_INPUTS = """
Args:
    nll (list[float]): per-example summed negative log-likelihood, nats, >= 0.
    num_tokens (list[int]): per-example scored-token counts, >= 0, total > 0.
Returns:
    {"perplexity": float, "mean_nll": float, "num_tokens": int}
Example:
    load_metric("perplexity").compute(nll=[2.0, 4.0], num_tokens=[2, 4])
"""


def aggregate(nll: Sequence[float], num_tokens: Sequence[int]) -> dict[str, float]:
    """Pool per-example NLL sums into perplexity; also a bootstrap statistic."""
    nll_arr = np.asarray(nll, dtype=np.float64)
    tok_arr = np.asarray(num_tokens, dtype=np.int64)
    if nll_arr.shape != tok_arr.shape or nll_arr.ndim != 1:
        raise ValueError(f"nll and num_tokens must be 1-D and aligned, got {nll_arr.shape} and {tok_arr.shape}")
    if (tok_arr < 0).any() or not np.isfinite(nll_arr).all() or (nll_arr < 0).any():
        raise ValueError("nll must be finite and >= 0, and num_tokens >= 0")
    total_tokens = int(tok_arr.sum())
    if total_tokens == 0:
        raise ValueError("perplexity needs at least one scored token")
    mean_nll = float(nll_arr.sum() / total_tokens)
    # math.exp raises OverflowError past ~709 nats/token; a diverged model is inf, not a crash.
    perplexity = math.exp(mean_nll) if mean_nll < 709.0 else math.inf
    return {"perplexity": perplexity, "mean_nll": mean_nll, "num_tokens": total_tokens}


class Perplexity(evaluate.Metric):
    """Aggregates (nll, num_tokens) pairs into corpus perplexity."""

    def _info(self) -> evaluate.MetricInfo:
        features = datasets.Features({"nll": datasets.Value("float64"), "num_tokens": datasets.Value("int64")})
        url = "https://huggingface.co/docs/transformers/perplexity"
        return metric_info(_DESCRIPTION, _CITATION, _INPUTS, features, reference_urls=[url])

    def _compute(self, nll: list[float], num_tokens: list[int]) -> dict[str, float]:
        return aggregate(nll, num_tokens)

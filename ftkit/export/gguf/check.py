"""Is the GGUF file the merged model? Asked of llama.cpp when it is installed, else of transformers.

llama.cpp is the program that will serve the file, so its answer is the one that counts: its
tokenization of the probe texts (special tokens and odd Unicode included) must equal the tokenizer's,
its next-token choice must agree with the merged model's, its logits stay within the bound of the
file's type, and for F32 its greedy continuations must be the merged model's. Without llama.cpp the
file is read back through transformers' `gguf_file=`, which shares its tables with the writer; the
result says which judge answered.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ftkit.export import ExportError
from ftkit.export.gguf import llamacpp
from ftkit.export.verify import Outputs, Probes, compare, logits_of, outputs_of

# Per file type: the largest |logit difference| from the merged fp32 model, and the least next-token
# agreement, that a file may show and still be kept (measured bounds, docs/export-and-serving.md).
TOLERANCE = {"f32": 2e-3, "f16": 0.5, "q8_0": 1.0, "q4_0": 4.0, "q4_k_m": 4.0}
AGREEMENT = {"f32": 0.98, "f16": 0.99, "q8_0": 0.9, "q4_0": 0.5, "q4_k_m": 0.5}
GENERATION_TOKENS = 16
ODD_TEXTS = (
    "Hello, world! 123 4567 — naïve café ☕ 東京 🙂",
    "  leading spaces\nand\ttabs\n\n\ntrailing  ",
    "don't STOP'll 3.14159 $100 #tag @user",
)


@dataclass
class GgufCheck:
    dtype: str
    judge: str  # "llama.cpp (llama-cpp-python 0.3.36)" or "transformers"
    probes: int
    max_abs_logit_diff: float
    mean_abs_logit_diff: float
    next_token_agreement: float
    tolerance: float
    min_agreement: float
    generations_equal: int
    generations: int
    tokenizer_texts: int


def check_gguf(merged_dir: Path, gguf_path: Path, probe: Probes, dtype: str) -> GgufCheck:
    """Compare the GGUF file with the merged model it came from; an ExportError when it falls short."""
    from transformers import AutoModelForCausalLM

    from ftkit.models import load_tokenizer
    from ftkit.recipe import ModelConfig

    tokenizer = load_tokenizer(str(merged_dir), ModelConfig(source=str(merged_dir)))  # with ftkit's pad token
    reference = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32)
    if tokenizer.pad_token_id >= reference.get_input_embeddings().num_embeddings:  # a pad ftkit added, not trained
        tokenizer.pad_token = tokenizer.eos_token  # only ever masked here
    by_llamacpp = llamacpp.available()

    def run(model: Any) -> Outputs:  # no generation check without llama.cpp (0 of 0): transformers' own reader
        if by_llamacpp:
            return outputs_of(model, tokenizer, probe, GENERATION_TOKENS)
        return Outputs(logits_of(model, probe.full), [])

    expected = run(reference)
    del reference
    texts = tokenizer_texts(tokenizer, probe)
    if by_llamacpp:
        judge = llamacpp.version()
        model = llamacpp.LlamaCppModel(gguf_path, context=_context(probe))
        got = run(model)
        tokenize = model.tokenize
    else:
        judge = "transformers"
        loaded, gguf_tokenizer = _transformers_load(gguf_path)
        got = run(loaded)
        tokenize = lambda text: gguf_tokenizer(text)["input_ids"]  # noqa: E731
    agree = compare(got, expected)
    check = GgufCheck(
        dtype=dtype,
        judge=judge,
        probes=len(probe.full),
        max_abs_logit_diff=agree.max_abs_logit_diff,
        mean_abs_logit_diff=agree.mean_abs_logit_diff,
        next_token_agreement=agree.next_token_agreement,
        tolerance=TOLERANCE[dtype],
        min_agreement=AGREEMENT[dtype],
        generations_equal=agree.generations_equal,
        generations=agree.generations,
        tokenizer_texts=len(texts),
    )
    mismatched = [text for text in texts if tokenize(text) != tokenizer(text)["input_ids"]]
    _require(check, mismatched)
    return check


def _require(check: GgufCheck, mismatched: list[str]) -> None:
    where = f"through {check.judge}"
    if mismatched:
        raise ExportError(
            f"the GGUF tokenizer ({where}) encodes {len(mismatched)} of {check.tokenizer_texts} texts differently "
            f"from the model's tokenizer, e.g. {mismatched[0][:60]!r}; nothing was written"
        )
    if check.max_abs_logit_diff > check.tolerance or check.next_token_agreement < check.min_agreement:
        raise ExportError(
            f"the {check.dtype} GGUF ({where}) differs from the merged model: max |Δlogit| "
            f"{check.max_abs_logit_diff:.3g} (bound {check.tolerance}), next-token agreement "
            f"{check.next_token_agreement:.1%} (bound {check.min_agreement:.0%}); nothing was written"
        )
    if check.dtype == "f32" and check.generations_equal != check.generations:
        raise ExportError(
            f"the f32 GGUF ({where}) continues {check.generations - check.generations_equal} of {check.generations} "
            "probes differently from the merged model under greedy decoding; nothing was written"
        )


def _context(probe: Probes) -> int:
    longest = max(len(seq) for seq in [*probe.full, *probe.prompts]) + GENERATION_TOKENS
    return max(256, 1 << (longest - 1).bit_length())


def _transformers_load(gguf_path: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        return (
            AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32),
            AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name),
        )
    except Exception as error:  # transformers raises many types for GGUF files it cannot read
        raise ExportError(
            f"the written GGUF does not load back with transformers ({error}); install llama-cpp-python "
            "(pip install 'ftkit[gguf]') to check it with llama.cpp"
        ) from error


def tokenizer_texts(tokenizer: Any, probe: Probes) -> list[str]:
    """The probes as text, odd text, and every special token of the tokenizer inline in a sentence."""
    specials = " and ".join(str(token) for token in tokenizer.all_special_tokens)
    return [tokenizer.decode(ids) for ids in probe.full] + [*ODD_TEXTS, f"before {specials} after"]

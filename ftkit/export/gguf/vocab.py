"""The tokenizer as llama.cpp reads it, from the tokenizer's own `tokenizer.json`.

Three kinds, told apart by the tokenizer's model and decoder, as llama.cpp tells them apart:

- byte-level BPE (GPT-2, Llama 3, Qwen, SmolLM): GGUF tokenizer "gpt2", the merges, and the name of
  the pre-tokenizer split llama.cpp implements (it cannot read the regex itself, only the name);
- SentencePiece BPE (Mistral, Phi-3, Gemma): "llama", where llama.cpp merges the pair whose result
  scores highest, so each token's score is minus the rank of the merge that makes it;
- SentencePiece Unigram: "t5" (llama.cpp's Viterbi tokenizer), scores as trained.

Special tokens, whether BOS is added, and the chat template come from the tokenizer as transformers
loads it (via the `gguf` package's `SpecialVocab`), so the file holds the template the model was trained on.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ftkit.export import ExportError

# llama.cpp's names for the byte-level pre-tokenizer splits it implements, keyed by the split regex a
# tokenizer.json carries (None: ByteLevel's own GPT-2 regex). The regexes are the families' published ones.
LLAMA3_SPLIT = "|".join(
    [r"(?i:'s|'t|'re|'ve|'m|'ll|'d)", r"[^\r\n\p{L}\p{N}]?\p{L}+", r"\p{N}{1,3}", r" ?[^\s\p{L}\p{N}]+[\r\n]*"]
    + [r"\s*[\r\n]+", r"\s+(?!\S)", r"\s+"]
)
PRE_TOKENIZERS = {
    None: "gpt-2",
    LLAMA3_SPLIT: "llama-bpe",
    LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}"): "qwen2",
}
BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def write_vocab(writer: Any, tokenizer: Any, folder: Path, vocab_size: int) -> None:
    """Tokens, scores, types, merges, special ids and chat template; the token list padded to the
    embedding's rows (llama.cpp requires one token per row)."""
    import gguf

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    kind = _kind(spec)
    tokens, scores = _tokens_and_scores(spec, tokenizer, kind)
    types = _token_types(tokenizer, tokens, kind)
    if len(tokens) > vocab_size:
        raise ExportError(f"GGUF export: the tokenizer has {len(tokens)} tokens but the model only {vocab_size} rows")
    pad = range(len(tokens), vocab_size)
    tokens += [f"[PAD{i}]" for i in pad]
    scores += [-1000.0 for _ in pad]
    types += [gguf.TokenType.UNUSED for _ in pad]
    writer.add_tokenizer_model({"bpe": "gpt2", "spm": "llama", "unigram": "t5"}[kind])
    writer.add_tokenizer_pre(_pre_tokenizer(spec) if kind == "bpe" else "default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    if kind != "bpe":
        writer.add_token_scores(scores)
        writer.add_add_space_prefix(_adds_space_prefix(spec))
    if kind == "unigram":
        writer.add_remove_extra_whitespaces(False)  # transformers' Unigram keeps runs of spaces as they are
    special = gguf.SpecialVocab(folder, load_merges=kind == "bpe", n_vocab=vocab_size)
    special.add_special_token = added_tokens(tokenizer)
    special.add_to_gguf(writer, quiet=True)


def added_tokens(tokenizer: Any) -> dict[str, bool]:
    """Whether the tokenizer adds BOS before and EOS after a text, as it does it (not as configs claim): what
    the GGUF tells llama.cpp (and Ollama) to add on tokenising."""
    ids = tokenizer("a")["input_ids"]
    return {
        "bos": tokenizer.bos_token_id is not None and ids[:1] == [tokenizer.bos_token_id],
        "eos": tokenizer.eos_token_id is not None and ids[-1:] == [tokenizer.eos_token_id],
    }


def _kind(spec: dict[str, Any]) -> str:
    model, decoder = spec["model"]["type"], json.dumps(spec.get("decoder"), ensure_ascii=False)
    if model == "BPE" and '"ByteLevel"' in decoder:
        return "bpe"
    if model == "BPE" and ("▁" in decoder or '"Metaspace"' in decoder):  # SentencePiece's word marker
        if not any(BYTE_TOKEN.fullmatch(token) for token in spec["model"]["vocab"]):
            raise ExportError(
                "GGUF export: this SentencePiece tokenizer has no byte-fallback tokens (<0x00>..<0xFF>); "
                "llama.cpp aborts on any character outside its vocabulary without them"
            )
        return "spm"
    if model == "Unigram":
        return "unigram"
    raise ExportError(
        f"GGUF export: a {model} tokenizer with decoder {decoder} is none of the kinds llama.cpp reads "
        "(byte-level BPE, SentencePiece BPE, SentencePiece Unigram)"
    )


def _pre_tokenizer(spec: dict[str, Any]) -> str:
    """llama.cpp's name for this tokenizer's split, read off its pre_tokenizer; refused when llama.cpp has none."""
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [step.get("type") for step in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return PRE_TOKENIZERS[None]
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"  # each digit alone, then GPT-2's regex (SmolLM's tokenizer)
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        regex = steps[0].get("pattern", {}).get("Regex")
        if regex in PRE_TOKENIZERS:
            return PRE_TOKENIZERS[regex]
    raise ExportError(
        f"GGUF export: llama.cpp has no pre-tokenizer for this byte-level BPE split ({json.dumps(pre)[:120]}...); "
        "it would tokenise text differently from the model's tokenizer"
    )


def _tokens_and_scores(spec: dict[str, Any], tokenizer: Any, kind: str) -> tuple[list[str], list[float]]:
    size = len(tokenizer)
    tokens = tokenizer.convert_ids_to_tokens(list(range(size)))
    if kind == "unigram":
        trained = {token: score for token, score in spec["model"]["vocab"]}
        return tokens, [float(trained.get(token, 0.0)) for token in tokens]
    if kind == "bpe":
        return tokens, [0.0] * size
    rank: dict[str, int] = {}
    for position, merge in enumerate(spec["model"]["merges"]):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        rank.setdefault(left + right, position)
    return tokens, [-float(rank.get(token, -1) + 1) for token in tokens]


def _token_types(tokenizer: Any, tokens: list[str], kind: str) -> list[Any]:
    import gguf

    added = tokenizer.added_tokens_decoder
    types = []
    for token_id, token in enumerate(tokens):
        if token_id in added:
            special = added[token_id].special or token_id in tokenizer.all_special_ids
            kind_of = gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED
            if token_id == tokenizer.unk_token_id and kind != "bpe":
                kind_of = gguf.TokenType.UNKNOWN
            types.append(kind_of)
        elif kind == "spm" and BYTE_TOKEN.fullmatch(token):
            types.append(gguf.TokenType.BYTE)
        else:
            types.append(gguf.TokenType.NORMAL)
    return types


def _adds_space_prefix(spec: dict[str, Any]) -> bool:
    """Whether the tokenizer puts '▁' before a text (Metaspace's prepend_scheme, or a Prepend normalizer)."""
    text = json.dumps([spec.get("pre_tokenizer"), spec.get("normalizer")])
    return '"prepend_scheme": "always"' in text or '"prepend_scheme": "first"' in text or '"Prepend"' in text

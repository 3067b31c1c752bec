"""The model families of the matrix: each one's config class, tokenizer kind, special tokens and chat template.

A family's tiny model (2 layers, hidden 64) is built from its real transformers config class. Its tokenizer
is of the family's kind: byte-level BPE families reuse the default model's real tokenizer with the
family's special tokens added; SentencePiece families (Mistral, Gemma, Phi-3) get one trained here, in a
fraction of a second, on the project's own data with `tokenizers` (BPE with byte fallback, or Unigram), laid
out as those families' tokenizer.json files are. The chat template is the family's published one, read from
`../shared/reference/chat_templates/` beside the repository (provenance in its PROVENANCE.md); base families
(GPT-2, Pythia) ship none.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ftkit.export.gguf.vocab import LLAMA3_SPLIT
from tests.conftest import REPO

TEMPLATES = REPO.parent / "shared" / "reference" / "chat_templates"
DATA = REPO / "data"
# The pre-tokenizer split of Llama 3 and Qwen2/3's tokenizers (their tokenizer.json): runs of newlines are one
# piece, so "\n\n" before a reply tokenises as it does at the end of a generation prompt.
SPLIT_LLAMA3 = LLAMA3_SPLIT  # llama.cpp checks it independently: its own "llama-bpe" split must tokenise alike
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}


@dataclass(frozen=True)
class Family:
    name: str
    model_type: str  # transformers' config class is found by this name (CONFIG_MAPPING)
    tokenizer: Literal["bpe", "spm-bpe", "spm-unigram"]
    bos: str | None
    eos: str
    template: str | None = None  # file in TEMPLATES; None: a base model with no chat template
    unk: str | None = None
    pad: str | None = None
    specials: tuple[str, ...] = ()  # role markers and end-of-turn tokens, added as special tokens
    plain: tuple[str, ...] = ()  # added tokens that are not special (Qwen3's <think>: kept by decode)
    stops: tuple[str, ...] = ()  # the generation config's eos_token_id list, as the family's checkpoints ship it
    adds_bos: bool = False  # the tokenizer puts BOS before an encoded text
    split: str | None = None  # a byte-level BPE family's own pre-tokenizer regex (default: GPT-2's)
    config: dict[str, Any] = field(default_factory=dict)  # config arguments beside TINY

    @property
    def chat(self) -> bool:
        return self.template is not None


FAMILIES = [
    Family(
        "llama3",
        "llama",
        "bpe",
        bos="<|begin_of_text|>",
        eos="<|eot_id|>",
        template="llama-3.1-8b-instruct.jinja",
        specials=("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
        stops=("<|end_of_text|>", "<|eot_id|>"),
        adds_bos=True,
        split=SPLIT_LLAMA3,
        config={"num_key_value_heads": 2, "tie_word_embeddings": False},
    ),
    Family(
        "qwen2.5",
        "qwen2",
        "bpe",
        bos=None,
        eos="<|im_end|>",
        pad="<|endoftext|>",
        template="qwen2.5-7b-instruct.jinja",
        stops=("<|im_end|>", "<|endoftext|>"),
        split=SPLIT_LLAMA3.replace(r"\p{N}{1,3}", r"\p{N}"),
        config={"num_key_value_heads": 2, "tie_word_embeddings": False},
    ),
    Family(
        "qwen3",
        "qwen3",
        "bpe",
        bos=None,
        eos="<|im_end|>",
        pad="<|endoftext|>",
        template="qwen3-0.6b.jinja",
        plain=("<think>", "</think>"),
        stops=("<|im_end|>", "<|endoftext|>"),
        split=SPLIT_LLAMA3.replace(r"\p{N}{1,3}", r"\p{N}"),
        config={"num_key_value_heads": 2, "head_dim": 16, "tie_word_embeddings": True},
    ),
    Family(
        "mistral",
        "mistral",
        "spm-bpe",
        bos="<s>",
        eos="</s>",
        unk="<unk>",
        template="mistral-7b-instruct-v0.2.jinja",  # v0.3's: see test_mistral_v03_system_turn_is_refused
        adds_bos=True,
        config={"num_key_value_heads": 2, "tie_word_embeddings": False},
    ),
    Family(
        "gemma2",
        "gemma2",
        "spm-unigram",
        bos="<bos>",
        eos="<eos>",
        unk="<unk>",
        pad="<pad>",
        template="gemma-2-2b-it.jinja",
        specials=("<start_of_turn>", "<end_of_turn>"),
        stops=("<eos>", "<end_of_turn>"),
        adds_bos=True,
        config={"num_key_value_heads": 2, "head_dim": 16, "query_pre_attn_scalar": 16, "sliding_window": 64},
    ),
    Family(
        "phi3",
        "phi3",
        "spm-bpe",
        bos="<s>",
        eos="<|endoftext|>",
        unk="<unk>",
        pad="<|endoftext|>",  # pad == EOS, as Phi-3-mini ships it: ftkit picks <unk> instead
        template="phi-3-mini-4k-instruct.jinja",
        specials=("<|system|>", "<|user|>", "<|assistant|>", "<|end|>"),
        stops=("<|endoftext|>", "<|assistant|>", "<|end|>"),
        config={"num_key_value_heads": 4, "tie_word_embeddings": False, "pad_token_id": None},
    ),
    Family("gpt2", "gpt2", "bpe", bos="<|endoftext|>", eos="<|endoftext|>", unk="<|endoftext|>"),
    Family("pythia", "gpt_neox", "bpe", bos="<|endoftext|>", eos="<|endoftext|>", unk="<|endoftext|>"),
]
BY_NAME = {family.name: family for family in FAMILIES}


def template_text(family: Family) -> str:
    """The published template, byte for byte (its sidecar's sha256 is checked by the tests)."""
    assert family.template is not None
    path = TEMPLATES / family.template
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the family matrix reads published chat templates from ../shared/reference")
    return path.read_text(encoding="utf-8")


def sidecar(family: Family) -> dict[str, Any]:
    assert family.template is not None
    return json.loads((TEMPLATES / family.template.replace(".jinja", ".json")).read_text(encoding="utf-8"))


def corpus() -> list[str]:
    """The project's own texts (every split of every task), to train SentencePiece tokenizers on."""
    texts = []
    for path in sorted(DATA.glob("*/*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            texts += [m["content"] for m in row.get("messages", [])]
            texts += [str(v) for k, v in row.items() if k != "messages" and isinstance(v, str)]
    return texts


def _named(family: Family) -> list[str]:
    names = [family.pad, family.eos, family.bos, family.unk]
    return list(dict.fromkeys(t for t in names if t))


def sentencepiece_tokenizer(family: Family) -> Any:
    """A SentencePiece-style tokenizer trained on `corpus()`: NFKC only, so newlines survive as they do in
    Gemma's and Mistral's real vocabularies; BOS added on encode where the family adds it."""
    from tokenizers import SentencePieceBPETokenizer, SentencePieceUnigramTokenizer, normalizers
    from transformers import PreTrainedTokenizerFast

    specials = list(dict.fromkeys([*_named(family), *family.specials]))
    if family.tokenizer == "spm-unigram":
        unigram = SentencePieceUnigramTokenizer()
        unigram.normalizer = normalizers.NFKC()
        unigram.train_from_iterator(
            corpus(), vocab_size=1500, special_tokens=specials, unk_token=family.unk, initial_alphabet=["\n"]
        )
        trained: Any = sentencepiece_layout(unigram, byte_fallback=False)
    else:
        bpe = SentencePieceBPETokenizer(unk_token=family.unk)
        bpe.normalizer = normalizers.NFKC()
        bpe.train_from_iterator(corpus(), vocab_size=1500, special_tokens=specials, initial_alphabet=["\n"])
        trained = sentencepiece_layout(bpe, byte_fallback=True)
    return PreTrainedTokenizerFast(
        tokenizer_object=trained._tokenizer,
        bos_token=family.bos,
        eos_token=family.eos,
        unk_token=family.unk,
        pad_token=family.pad,
        additional_special_tokens=list(family.specials),
    )


def sentencepiece_layout(trained: Any, byte_fallback: bool) -> Any:
    """The layout of Mistral's, Phi-3's and Gemma's own tokenizer.json (SentencePiece's): '▁' prepended to each text
    and spaces replaced by '▁' in the normalizer, no pre-tokenizer split; for BPE the 256 byte tokens
    <0x00>..<0xFF>, so a character outside the vocabulary becomes its UTF-8 bytes, not <unk>."""
    from tokenizers import Tokenizer

    spec = json.loads(trained._tokenizer.to_str())
    spec["normalizer"] = {
        "type": "Sequence",
        "normalizers": [spec["normalizer"], {"type": "Prepend", "prepend": "▁"}]
        + [{"type": "Replace", "pattern": {"String": " "}, "content": "▁"}],
    }
    spec["pre_tokenizer"] = None
    decoders = [{"type": "Replace", "pattern": {"String": "▁"}, "content": " "}]
    if byte_fallback:
        vocab = spec["model"]["vocab"]
        for byte in range(256):
            vocab.setdefault(f"<0x{byte:02X}>", len(vocab))
        spec["model"]["byte_fallback"] = True
        decoders.append({"type": "ByteFallback"})
    spec["decoder"] = {
        "type": "Sequence",
        "decoders": [*decoders, {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}],
    }
    trained._tokenizer = Tokenizer.from_str(json.dumps(spec))
    return trained


def bpe_tokenizer(family: Family, default_model_dir: Path) -> Any:
    """The default model's byte-level BPE tokenizer with the family's special tokens and names."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    tokenizer.add_special_tokens({"additional_special_tokens": list(family.specials)})
    tokenizer.add_tokens(list(family.plain))
    tokenizer.bos_token, tokenizer.eos_token, tokenizer.unk_token = family.bos, family.eos, family.unk
    tokenizer.pad_token = family.pad
    tokenizer.chat_template = None
    if family.split:
        from tokenizers import Regex, pre_tokenizers

        tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(family.split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    return tokenizer


def build_tokenizer(family: Family, default_model_dir: Path) -> Any:
    from tokenizers import processors

    if family.tokenizer == "bpe":
        tokenizer = bpe_tokenizer(family, default_model_dir)
    else:
        tokenizer = sentencepiece_tokenizer(family)
    if family.adds_bos:
        assert family.bos is not None
        bos = (family.bos, tokenizer.convert_tokens_to_ids(family.bos))
        tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{family.bos} $A", pair=f"{family.bos} $A $B", special_tokens=[bos]
        )
    if family.chat:
        tokenizer.chat_template = template_text(family)
    return tokenizer


def build_family(family: Family, folder: Path, default_model_dir: Path) -> Path:
    """Save the family's tiny random model (seeded) and its tokenizer as a local Hugging Face folder."""
    import torch
    from transformers import CONFIG_MAPPING, AutoModelForCausalLM

    tokenizer = build_tokenizer(family, default_model_dir)
    ids: Callable[[str | None], int | None] = lambda t: tokenizer.convert_tokens_to_ids(t) if t else None  # noqa: E731
    settings = (
        TINY
        | {"vocab_size": len(tokenizer), "max_position_embeddings": 1024, "n_positions": 1024}
        | {"bos_token_id": ids(family.bos), "eos_token_id": ids(family.eos), "pad_token_id": ids(family.pad)}
        | family.config
    )
    if family.model_type == "gpt2":
        settings |= {"n_embd": 64, "n_layer": 2, "n_head": 4}
    config = CONFIG_MAPPING[family.model_type](**settings)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    if family.stops:
        model.generation_config.eos_token_id = [ids(t) for t in family.stops]
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def rows(task: str, split: str, n: int) -> list[dict[str, Any]]:
    path = DATA / task / f"{split}.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()[:n]]

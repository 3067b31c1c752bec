"""GGUF: the merged model written with the `gguf` package's writer (no llama.cpp build needed), then
loaded back through transformers' `gguf_file=` and compared with the merged model: logits on
held-out prompts and the tokenizer's ids. Llama-architecture models only (`model_type` "llama",
byte-level BPE tokenizer); anything else is refused rather than written wrongly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ftkit.export import ExportError
from ftkit.export.verify import Probes, agreement, logits_of

GGUF_DTYPES = {"f32": torch.float32, "f16": torch.float16}
GGUF_TOLERANCE = {"f32": 1e-3, "f16": 0.5}  # max |logit difference| vs the merged model
GGUF_VERIFICATION = "gguf_verification.json"


def check_architecture(config: Any) -> None:
    """Only what this writer maps exactly: llama blocks with plain RoPE."""
    if config.model_type != "llama":
        raise ExportError(
            f"GGUF export supports llama-architecture models (model_type 'llama': Llama, SmolLM, TinyLlama, ...); "
            f"this model is '{config.model_type}'. "
            "Export --format safetensors and convert it with llama.cpp's convert_hf_to_gguf.py"
        )
    scaling = getattr(config, "rope_scaling", None) or {}
    if scaling.get("rope_type", scaling.get("type", "default")) not in ("default", None):
        raise ExportError(
            f"GGUF export: RoPE scaling {scaling} is not supported by ftkit's writer; export --format safetensors"
        )


def permute_for_gguf(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """llama.cpp orders each head's rotary pairs interleaved; transformers' GGUF loader undoes this."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def write_gguf(model_dir: Path, path: Path, dtype: str, name: str) -> None:
    """Write a llama-family HF folder (fp32 safetensors) as a GGUF file, tensors and tokenizer."""
    import gguf
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_rope_freq_base(float(getattr(config, "rope_theta", None) or config.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32 if dtype == "f32" else gguf.LlamaFileType.MOSTLY_F16)
    add_tokenizer(writer, tokenizer)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    state = {}
    for file in sorted(model_dir.glob("*.safetensors")):
        state.update(load_file(file))
    for hf_name, tensor in state.items():
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ExportError(f"GGUF export: no GGUF name for tensor {hf_name}; this llama variant is not supported")
        if hf_name.endswith("q_proj.weight"):
            tensor = permute_for_gguf(tensor, config.num_attention_heads)
        elif hf_name.endswith("k_proj.weight"):
            tensor = permute_for_gguf(tensor, config.num_key_value_heads)
        as_dtype = GGUF_DTYPES[dtype] if tensor.ndim == 2 else torch.float32  # norms stay f32, as llama.cpp does
        writer.add_tensor(gguf_name, tensor.to(as_dtype).numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=False)
    writer.close()


def add_tokenizer(writer: Any, tokenizer: Any) -> None:
    """A byte-level BPE tokenizer as GGUF's "gpt2" tokenizer: tokens, types, merges, special ids, template."""
    import gguf

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    if spec["model"]["type"] != "BPE":
        raise ExportError(f"GGUF export supports byte-level BPE tokenizers; this one is {spec['model']['type']}")
    size = len(tokenizer)
    special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokenizer.convert_ids_to_tokens(list(range(size))))
    writer.add_token_types([gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL for i in range(size)])
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]])
    for setter, token_id in (
        (writer.add_bos_token_id, tokenizer.bos_token_id),
        (writer.add_eos_token_id, tokenizer.eos_token_id),
        (writer.add_unk_token_id, tokenizer.unk_token_id),
        (writer.add_pad_token_id, tokenizer.pad_token_id),
    ):
        if token_id is not None:
            setter(token_id)
    writer.add_add_bos_token(bool(tokenizer("a")["input_ids"][:1] == [tokenizer.bos_token_id]))
    if isinstance(tokenizer.chat_template, str):
        writer.add_chat_template(tokenizer.chat_template)


@dataclass
class GgufCheck:
    dtype: str
    probes: int
    max_abs_logit_diff: float
    mean_abs_logit_diff: float
    next_token_agreement: float
    tolerance: float
    tokenizer_texts: int


def verify_gguf(merged_dir: Path, gguf_path: Path, probe: Probes, dtype: str) -> GgufCheck:
    """Load the GGUF back through transformers and compare it with the merged model it came from."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    reference = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32)
    expected = logits_of(reference, probe.full)
    del reference
    try:
        loaded = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
        gguf_tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    except Exception as error:  # transformers raises many types for GGUF files it cannot read
        raise ExportError(f"the written GGUF does not load back with transformers: {error}") from error
    got = logits_of(loaded, probe.full)
    agree = agreement(got, expected, [], [])
    check = GgufCheck(
        dtype=dtype,
        probes=len(probe.full),
        max_abs_logit_diff=agree.max_abs_logit_diff,
        mean_abs_logit_diff=agree.mean_abs_logit_diff,
        next_token_agreement=agree.next_token_agreement,
        tolerance=GGUF_TOLERANCE[dtype],
        tokenizer_texts=0,
    )
    if check.max_abs_logit_diff > check.tolerance:
        raise ExportError(
            f"GGUF logits differ from the merged model's by {check.max_abs_logit_diff:.3g} (> {check.tolerance}); "
            "nothing was written"
        )
    merged_tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    texts = _tokenizer_texts(merged_tokenizer, probe)
    mismatched = [t for t in texts if gguf_tokenizer(t)["input_ids"] != merged_tokenizer(t)["input_ids"]]
    if mismatched:
        raise ExportError(
            f"the GGUF tokenizer encodes {len(mismatched)} of {len(texts)} texts differently, "
            f"e.g. {mismatched[0][:60]!r}"
        )
    check.tokenizer_texts = len(texts)
    return check


def _tokenizer_texts(tokenizer: Any, probe: Probes) -> list[str]:
    decoded = [tokenizer.decode(ids) for ids in probe.full]
    return decoded + [
        "Hello, world! 123 — naïve café ☕",
        "  leading spaces\nand\ttabs",
        "<|im_start|>user\nhi<|im_end|>",
    ]

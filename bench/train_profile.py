"""Where a training step's time goes: `ftkit train` on the training benchmark's work, under torch.profiler.

Each side is its own subprocess training the 4-bit sentiment work of `bench/train_speed.py` (same
recipe overrides, batch 8); steps 2-5 are profiled (step 1 pays one-off costs). Every profiled op is
put in one bucket by its name, its input shapes and the profiler range it ran under:

    matmul        aten::mm/addmm/bmm of the frozen base and the LM head
    LoRA matmul   the same ops with a dimension equal to the LoRA rank
    4-bit dequant bitsandbytes' dequantize kernels
    attention     scaled-dot-product attention, forward and backward
    optimizer     everything inside `Optimizer.step` (AdamW) and `zero_grad`
    element-wise  every other kernel: casts and copies, norms, activations, additions, loss
    framework     time the profiler saw outside kernels (autograd's engine, module wrappers)
    Python        the rest of the step's wall time: the Trainer, the collator, peft and bitsandbytes' Python

    python bench/train_profile.py      # before (bitsandbytes dequantizes), peft-lora (peft's LoRA forward), after
    python bench/train_profile.py --sides after --steps 3

Writes bench/results/train_profile.json and .md and prints the table (seconds per step and share).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `python bench/train_profile.py` finds its neighbours

import torch  # noqa: E402
from common import ROOT, machine, write_results  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

SIDES = {  # name: the bench/train_speed.py run it profiles
    "before": "ftkit-bnb",  # bitsandbytes dequantizes the 4-bit weights every step
    "peft-lora": "ftkit-peft-lora",  # peft's own LoRA forward (clone, scale, add) instead of lora_forward's addmm
    "after": "ftkit",  # the default
}
BUCKETS = (
    "matmul",
    "LoRA matmul",
    "4-bit dequant",
    "attention",
    "optimizer",
    "element-wise",
    "framework",
    "Python",
)
MATMULS = ("aten::mm", "aten::addmm", "aten::bmm")


class Profile(TrainerCallback):
    """torch.profiler over optimizer steps first+1 .. first+steps, then every op's self time in its bucket."""

    def __init__(self, first: int, steps: int, rank: int) -> None:
        self.first, self.steps, self.rank = first, steps, rank
        self.profiler: Any = None
        self.started = 0.0
        self.result: dict[str, Any] = {}

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == self.first:
            self.profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True)
            self.profiler.__enter__()
            self.started = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.profiler is not None and state.global_step == self.first + self.steps:
            wall = time.perf_counter() - self.started
            self.profiler.__exit__(None, None, None)
            self.result = self.buckets(self.profiler.events(), wall)
            self.profiler = None

    def buckets(self, events: Any, wall: float) -> dict[str, Any]:
        seconds: dict[str, float] = defaultdict(float)
        ops: dict[tuple[str, str], float] = defaultdict(float)  # (bucket, op): seconds, for the JSON's top ops
        for event in events:
            bucket = self.bucket(event)
            seconds[bucket] += event.self_cpu_time_total / 1e6
            ops[bucket, event.name] += event.self_cpu_time_total / 1e6
        seconds["Python"] = max(0.0, wall - sum(seconds.values()))
        top = sorted(ops.items(), key=lambda item: -item[1])[:25]
        return {
            "wall_s_per_step": wall / self.steps,
            "s_per_step": {b: seconds[b] / self.steps for b in BUCKETS},
            "top_ops_s_per_step": [[bucket, op, round(s / self.steps, 4)] for (bucket, op), s in top],
        }

    def bucket(self, event: Any) -> str:
        node = event  # the event itself or any range it ran under
        while node is not None:
            if node.name.startswith(("Optimizer.step", "Optimizer.zero_grad")):
                return "optimizer"
            node = node.cpu_parent
        name = event.name
        if name in MATMULS:
            dims = {d for shape in event.input_shapes if shape for d in shape}
            return "LoRA matmul" if self.rank in dims else "matmul"
        if name.startswith("bitsandbytes::dequantize"):
            return "4-bit dequant"
        if "scaled_dot_product" in name or "flash_attention" in name:
            return "attention"
        if name.startswith("aten::") or name.startswith("bitsandbytes::"):
            return "element-wise"
        return "framework"


def child(side: str, steps: int, result_path: Path) -> None:
    """One profiled training run (the product path of `ftkit train --no-eval`, as in train_speed)."""
    from train_speed import bench_recipe, switch_off

    from ftkit import runs
    from ftkit.data.prepared import prepare
    from ftkit.training.trainer import train

    with tempfile.TemporaryDirectory(prefix=f"profile-{side}-") as tmp:
        recipe = bench_recipe("4bit", steps + 2, Path(tmp) / "run", switch_off(SIDES[side]))
        prepared = prepare(recipe)
        prepared.raise_if_fatal()
        run = runs.RunDir(recipe.run_dir)
        runs.prepare(run, overwrite=True, resume=False)
        profile = Profile(first=1, steps=steps, rank=recipe.adapter.r)
        train(recipe, run, prepared, callbacks=[profile])
    result_path.write_text(json.dumps(profile.result | {"side": side, "steps": steps}))


def run_child(side: str, steps: int, log: Path) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json") as result, log.open("a") as handle:
        handle.write(f"\n===== {side} =====\n")
        handle.flush()
        command = [sys.executable, __file__, "--child", side, "--steps", str(steps), "--result", result.name]
        done = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT)
        if done.returncode != 0:
            raise SystemExit(f"train_profile: the {side} run failed (exit {done.returncode}); see {log}")
        return json.loads(Path(result.name).read_text())


def render(results: list[dict[str, Any]]) -> str:
    head = " | ".join(f"{r['side']} s/step | share" for r in results)
    lines = [f"| where the time goes | {head} |", "|---|" + "---|---|" * len(results)]
    for bucket in BUCKETS:
        cells = []
        for r in results:
            s = r["s_per_step"][bucket]
            cells.append(f"{s:.3f} | {100 * s / r['wall_s_per_step']:.1f} %")
        lines.append(f"| {bucket} | " + " | ".join(cells) + " |")
    lines.append("| **step (wall)** | " + " | ".join(f"**{r['wall_s_per_step']:.3f}** | 100 %" for r in results) + " |")
    lines.append(
        "\nProfiled optimizer steps 2-5 of the 4-bit training benchmark's work (torch.profiler adds its own "
        "overhead, so these steps are slower than bench/train_speed.py's); before = bitsandbytes dequantizes "
        "every step (model.dequantized_base: false), peft-lora = peft's own LoRA forward instead of "
        "ftkit.training.lora_forward, after = ftkit's default."
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sides", default=",".join(SIDES), help=f"comma-separated, from {','.join(SIDES)}")
    parser.add_argument("--steps", type=int, default=4, help="profiled optimizer steps per side (default 4)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.steps, args.result)
    sides = [s for s in args.sides.split(",") if s]
    if any(s not in SIDES for s in sides) or args.steps < 1:
        raise SystemExit(f"train_profile: --sides from {','.join(SIDES)}, --steps >= 1")
    log = ROOT / "bench" / "results" / "train_profile.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    results = [run_child(side, args.steps, log) for side in sides]
    table = render(results)
    write_results("train_profile", {"machine": machine(), "results": results}, table)
    print(table)


if __name__ == "__main__":
    main()

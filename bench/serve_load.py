"""Serving under load: `ftkit serve` driven by 1, 4 and 16 concurrent streaming `openai` clients.

The server is the real command (`python -m ftkit.cli serve`) in a subprocess on a loopback port, serving the
default model (4-bit, as QLoRA runs are served) with two LoRA adapters, `alpha` and `beta`. The adapters are
random (`tests/tiny_adapters.py`): this measures speed, not answers. Each client sends its requests one after
another, greedy, `max_tokens` each, streamed. Two scenarios run against the one server:

- `one`: every request asks `alpha` (several people trying one adapter);
- `mixed`: request k asks `base`, `alpha`, `beta` in turn (k mod 3), so batches mix adapters.

Request k of a level asks question k, so the same (question, system) pairs recur across levels, and each
reply is compared with the first round's 1-client reply to the same pair. Per level: total completion tokens/s
over the level's wall time, time to first token (first content chunk) and request latency, p50 and p95. The
levels run `--rounds` times, in turn forwards and backwards (1, 4, 16, then 16, 4, 1, ...), and the table shows
medians over the rounds, each ratio to one client taken within its round: neighbours' load drifts over minutes,
and a ratio of levels run minutes apart measures the drift too. Afterwards,
with the server gone, one decode step of 4 rows is timed in this process three ways, alternated: 2 + 2 rows
of two adapters as one mixed-adapter forward (what the server does), the same rows as one forward per adapter
(grouping), and 4 rows of one adapter through peft's active adapter (what the server does for one system).

    python bench/serve_load.py [--requests 8] [--max-tokens 32] [--rounds 3] [--level-seconds 180] [--torch-threads N]

Bounded: at most `--requests` requests per level (16 at 16 clients) and `--level-seconds` per level; loopback
only. Writes bench/results/serve_load.json and .md and prints the Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `python bench/serve_load.py` finds bench/common.py
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # and tests/tiny_adapters.py

from common import ROOT, machine, write_results  # noqa: E402

from ftkit.models import resolve_source  # noqa: E402

LEVELS = (1, 4, 16)
METRICS = ("wall_s", "tokens_per_s", "ttft_p50_s", "ttft_p95_s", "latency_p50_s", "latency_p95_s")
SCENARIOS = {"one": ("alpha",), "mixed": ("base", "alpha", "beta")}


def questions(count: int) -> list[str]:
    """The first user turn of the shipped customer-service conversations."""
    rows = (json.loads(line) for line in (ROOT / "data" / "customer_service" / "train.jsonl").open(encoding="utf-8"))
    firsts = (next(m["content"] for m in row["messages"] if m["role"] == "user") for row in rows)
    return [q for _, q in zip(range(count), firsts, strict=False)]


def make_adapters(folder: Path) -> list[Path]:
    from tests.tiny_adapters import make_adapter, make_run

    base = Path(resolve_source("default"))
    return [make_run(folder, base, "alpha", seed=1), make_adapter(folder / "beta", base, seed=2)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(
    targets: list[Path], port: int, max_tokens: int, threads: int | None, log: Path
) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "ftkit.cli", "serve", *map(str, targets), "--port", str(port)]
    command += ["--quantization", "4bit", "--max-new-tokens-limit", str(max_tokens)]
    env = os.environ | {"PYTHONPATH": str(ROOT)} | ({"OMP_NUM_THREADS": str(threads)} if threads else {})
    env.pop("FTKIT_API_KEY", None)
    server = subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and server.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            time.sleep(0.5)
    server.kill()
    raise SystemExit(f"ftkit serve did not come up within 300 s; see {log}")


def one_request(client: Any, k: int, systems: tuple[str, ...], asked: list[str], max_tokens: int) -> dict[str, Any]:
    system, question = systems[k % len(systems)], asked[k % len(asked)]
    started = time.perf_counter()
    first, text, tokens = None, "", 0
    stream = client.chat.completions.create(
        model=system,
        messages=[{"role": "user", "content": question}],
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.perf_counter()
            text += chunk.choices[0].delta.content
    ended = time.perf_counter()
    return {
        "k": k,
        "system": system,
        "tokens": tokens,
        "ttft_s": (first or ended) - started,
        "latency_s": ended - started,
        "text": text,
        "started": started,
        "ended": ended,
    }


def run_level(
    url: str, clients: int, total: int, systems: tuple[str, ...], asked: list[str], args: argparse.Namespace
) -> dict[str, Any]:
    """`clients` threads, each sending requests k = client, client + clients, ... below `total`, one at a time."""
    from openai import OpenAI

    client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600)
    done: list[dict[str, Any]] = []
    deadline = time.perf_counter() + args.level_seconds

    def work(first: int) -> None:
        for k in range(first, total, clients):
            if time.perf_counter() > deadline:
                return
            done.append(one_request(client, k, systems, asked, args.max_tokens))

    threads = [threading.Thread(target=work, args=(c,)) for c in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = max(r["ended"] for r in done) - started
    tokens = sum(r["tokens"] for r in done)
    return {
        "clients": clients,
        "requests": len(done),
        "tokens": tokens,
        "wall_s": wall,
        "tokens_per_s": tokens / wall,
        "ttft_p50_s": float(np.percentile([r["ttft_s"] for r in done], 50)),
        "ttft_p95_s": float(np.percentile([r["ttft_s"] for r in done], 95)),
        "latency_p50_s": float(np.percentile([r["latency_s"] for r in done], 50)),
        "latency_p95_s": float(np.percentile([r["latency_s"] for r in done], 95)),
        "replies": sorted(
            ({"k": r["k"], "system": r["system"], "text": r["text"]} for r in done), key=lambda r: r["k"]
        ),
    }


def same_as_alone(rounds: list[list[dict[str, Any]]]) -> dict[str, str]:
    """Per level, over all rounds: how many replies equal the first round's 1-client reply to the same
    (question, system)."""
    alone = {r["k"]: r["text"] for r in rounds[0][0]["replies"]}
    counts = {}
    for index, clients in enumerate(LEVELS):
        runs = [round_[index] for round_ in rounds][1 if index == 0 else 0 :]  # not the reference itself
        shared = [r for run in runs for r in run["replies"] if r["k"] in alone]
        if shared:
            counts[str(clients)] = f"{sum(r['text'] == alone[r['k']] for r in shared)}/{len(shared)}"
    return counts


def summary(rounds: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per level, medians over the rounds; the ratios to one client are taken within each round."""
    levels = []
    for index, clients in enumerate(LEVELS):
        runs = [(round_[index], round_[0]) for round_ in rounds]
        speeds = [run["tokens_per_s"] for run, _ in runs]
        ratios = [run["tokens_per_s"] / one["tokens_per_s"] for run, one in runs]
        tails = [run["latency_p95_s"] / one["latency_p50_s"] for run, one in runs]
        levels.append(
            {"clients": clients, "requests": runs[0][0]["requests"], "tokens": runs[0][0]["tokens"]}
            | {key: statistics.median(run[key] for run, _ in runs) for key in METRICS}
            | {
                "tokens_per_s_range": [min(speeds), max(speeds)],
                "vs_one_client": statistics.median(ratios),
                "vs_one_client_per_round": ratios,
                "p95_vs_one_client_p50": statistics.median(tails),
            }
        )
    return levels


@torch.inference_mode()
def adapters_in_one_step(targets: list[Path], asked: list[str], repeats: int) -> dict[str, dict[str, float]]:
    """Seconds of one decode step of 4 prefilled rows, three ways, alternated (after one untimed round):
    2 + 2 rows of two adapters as one mixed-adapter forward or as one forward per adapter, and 4 rows of one
    adapter through peft's active adapter. Min and median over `repeats`."""
    from transformers import DynamicCache

    from ftkit.evaluation.inference import left_pad
    from ftkit.serving import runtime
    from ftkit.serving.targets import resolve_targets

    found, base = resolve_targets(targets, "4bit")
    deployment = runtime.load(found, base)
    model, tokenizer = deployment.model, deployment.tokenizer
    names = [deployment.adapters[n] for n in ("alpha", "beta", "alpha", "beta")]
    prompts = [runtime.prompt_ids(tokenizer, [{"role": "user", "content": q}]) for q in asked[:4]]
    batch = left_pad(prompts, tokenizer.pad_token_id, torch.device("cpu"))
    prefill = model(**batch, past_key_values=DynamicCache(), use_cache=True, adapter_names=names, logits_to_keep=1)
    last = prefill.logits[:, -1].argmax(-1, keepdim=True)
    layers = [(k, v) for k, v, _ in prefill.past_key_values]

    def step(rows: list[int], **extra: Any) -> None:
        cache = DynamicCache([(k[rows].clone(), v[rows].clone()) for k, v in layers])
        mask = batch["attention_mask"][rows]
        model(
            input_ids=last[rows],
            attention_mask=torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1),
            position_ids=mask.sum(-1, keepdim=True),
            past_key_values=cache,
            logits_to_keep=1,
            **extra,
        )

    def grouped() -> None:
        for adapter in dict.fromkeys(names):
            model.set_adapter(adapter)
            step([row for row, name in enumerate(names) if name == adapter])

    def one_adapter() -> None:
        model.set_adapter(names[0])
        step([0, 1, 2, 3])

    ways = {"mixed": lambda: step([0, 1, 2, 3], adapter_names=names), "grouped": grouped, "one adapter": one_adapter}
    times: dict[str, list[float]] = {way: [] for way in ways}
    for round_ in range(repeats + 1):
        for way, run in ways.items():
            started = time.perf_counter()
            run()
            if round_:
                times[way].append(time.perf_counter() - started)
    return {way: {"min_s": min(values), "median_s": statistics.median(values)} for way, values in times.items()}


def table(result: dict[str, Any]) -> str:
    lines = [
        f"Medians of {result['settings']['rounds']} rounds (tokens/s: min-max; vs 1 client: each round's ratio):",
        "",
        "| scenario | clients | requests | completion tokens | wall s | tokens/s | vs 1 client | TTFT p50 s "
        "| TTFT p95 s | latency p50 s | latency p95 s | p95 / 1-client p50 | same answer as alone |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for scenario, run in result["scenarios"].items():
        for level in run["summary"]:
            same = run["same_as_alone"].get(str(level["clients"]), "-")
            ratios = ", ".join(f"{ratio:.2f}" for ratio in level["vs_one_client_per_round"])
            low, high = level["tokens_per_s_range"]
            lines.append(
                f"| {scenario} | {level['clients']} | {level['requests']} | {level['tokens']} | {level['wall_s']:.1f} "
                f"| {level['tokens_per_s']:.1f} ({low:.1f}-{high:.1f}) | {level['vs_one_client']:.2f}x ({ratios}) "
                f"| {level['ttft_p50_s']:.2f} | {level['ttft_p95_s']:.2f} | {level['latency_p50_s']:.2f} "
                f"| {level['latency_p95_s']:.2f} | {level['p95_vs_one_client_p50']:.2f}x | {same} |"
            )
    lines += [
        "",
        f"One decode step of 4 rows (min / median of {result['settings']['step_repeats']}, alternated):",
        "",
        "| rows | way | min ms | median ms |",
        "|---|---|---|---|",
    ]
    rows = {"mixed": "2 alpha + 2 beta", "grouped": "2 alpha + 2 beta", "one adapter": "4 alpha"}
    for way, timing in result["adapters_in_one_step"].items():
        lines.append(f"| {rows[way]} | {way} | {timing['min_s'] * 1000:.0f} | {timing['median_s'] * 1000:.0f} |")
    load = result["load_average_before"]
    threads = result["settings"]["torch_threads"] or "torch's default"
    lines.append(
        f"\nLoad average before the run: {load[0]:.2f} (1 min), {load[1]:.2f} (5 min); server torch threads: {threads}."
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=8, help="requests per level, at least one per client")
    parser.add_argument("--max-tokens", type=int, default=32, help="max_tokens of every request")
    parser.add_argument("--rounds", type=int, default=3, help="runs of every level, in alternating order")
    parser.add_argument("--level-seconds", type=float, default=180, help="no request starts later in a level")
    parser.add_argument("--step-repeats", type=int, default=7, help="timed decode steps per way")
    parser.add_argument("--scenarios", default="one,mixed", help=f"comma-separated, from {','.join(SCENARIOS)}")
    parser.add_argument("--torch-threads", type=int, help="the server's OMP_NUM_THREADS (default: torch's choice)")
    args = parser.parse_args()

    asked = questions(16)
    load = os.getloadavg()
    scenarios: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="ftkit-serve-load-") as scratch:
        targets = make_adapters(Path(scratch))
        port = free_port()
        log = Path(scratch) / "server.log"
        server = start_server(targets, port, args.max_tokens, args.torch_threads, log)
        url = f"http://127.0.0.1:{port}"
        try:
            run_level(url, 1, 1, SCENARIOS["mixed"], asked, args)  # warm-up, not reported
            for scenario in args.scenarios.split(","):
                systems = SCENARIOS[scenario]
                rounds = []
                for round_ in range(args.rounds):
                    order = LEVELS if round_ % 2 == 0 else LEVELS[::-1]
                    runs = {c: run_level(url, c, max(args.requests, c), systems, asked, args) for c in order}
                    rounds.append([runs[c] for c in LEVELS])
                scenarios[scenario] = {
                    "systems": list(systems),
                    "summary": summary(rounds),
                    "rounds": rounds,
                    "same_as_alone": same_as_alone(rounds),
                }
        finally:
            server.terminate()
            server.wait(timeout=30)
        if args.torch_threads:
            torch.set_num_threads(args.torch_threads)
        steps = adapters_in_one_step(targets, asked, args.step_repeats)
    result = {
        "settings": vars(args) | {"model": "default, 4-bit NF4"},
        "machine": machine(),
        "load_average_before": load,
        "scenarios": scenarios,
        "adapters_in_one_step": steps,
    }
    text = table(result)
    write_results("serve_load", result, text)
    print(text)


if __name__ == "__main__":
    main()

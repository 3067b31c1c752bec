"""`ftkit ui` with many runs: how long the runs page and a run page take to serve with 200 run directories.

The 200 runs are copies of one real run directory (`--source`, default the `make demo` run): its
recipe.yaml, train_log.jsonl, metrics.json, predictions.jsonl, report.md, plots and adapter manifest
(not the weights or checkpoints, which no page reads). The app is served by uvicorn on a loopback
port and fetched with httpx, as a browser would; the first request to the runs page reads every
run's files (cold), later ones find the summaries cached while the files are unchanged (warm).

    python bench/ui_speed.py [--source runs/sentiment-smollm2-qlora] [--runs 200] [--repeats 20]

Writes bench/results/ui_speed.json and .md and prints the Markdown table.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `python bench/ui_speed.py` finds bench/common.py
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # and tests/live_server.py

from common import ROOT, machine, write_results  # noqa: E402

from ftkit.runs import MANIFEST, RunDir
from ftkit.ui.app import create_app
from tests.live_server import serving


def copy_run(source: RunDir, target: Path) -> None:
    kept = (source.recipe, source.train_log, source.launch, source.metrics, source.predictions, source.report)
    copy = RunDir(target)
    target.mkdir(parents=True)
    for path in [*kept, *source.path.glob("*.png")]:
        if path.is_file():
            shutil.copy2(path, target / path.name)
    if (source.adapter / MANIFEST).is_file():
        copy.adapter.mkdir()
        shutil.copy2(source.adapter / MANIFEST, copy.adapter / MANIFEST)


def timed(client: httpx.Client, path: str) -> float:
    started = time.perf_counter()
    answer = client.get(path)
    seconds = time.perf_counter() - started
    answer.raise_for_status()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=ROOT / "runs" / "sentiment-smollm2-qlora")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    source = RunDir(args.source)
    if not source.metrics.is_file():
        sys.exit(f"{args.source}: no metrics.json; run `make demo` first (or pass --source RUN_DIR)")

    with tempfile.TemporaryDirectory(prefix="ftkit-ui-bench-") as folder:
        root = Path(folder) / "runs"
        for i in range(args.runs):  # half of them nested, as a sweep's trials are
            copy_run(source, root / (f"sweeps/s{i % 5}/trials/{i:03d}" if i % 2 else f"run-{i:03d}"))
        with (
            serving(create_app(root, token="bench"), "/static/ui.css") as url,
            httpx.Client(base_url=url, timeout=60) as client,
        ):
            cold = timed(client, "/")
            warm = [timed(client, "/") for _ in range(args.repeats)]
            run = [timed(client, "/run/run-000") for _ in range(args.repeats)]
            nested = [timed(client, "/run/sweeps/s1/trials/001") for _ in range(args.repeats)]
            examples = [timed(client, "/run/run-000/examples?kind=broken") for _ in range(args.repeats)]
            size = len(client.get("/").content)

    rows = [
        ("runs page, first request (reads every run)", [cold]),
        ("runs page, later requests", warm),
        ("a run page", run),
        ("a nested run page (sweeps/…/trials/001)", nested),
        ("examples page, filtered to broken", examples),
    ]
    result = {
        "runs": args.runs,
        "source": str(args.source),
        "repeats": args.repeats,
        "runs_page_bytes": size,
        "seconds": {name: {"median": statistics.median(v), "max": max(v)} for name, v in rows},
        "machine": machine(),
    }
    table = "\n".join(
        [
            f"`ftkit ui` with {args.runs} run directories (copies of {args.source.name}); seconds per request,"
            f" median and max of {args.repeats} (the cold request once)",
            "",
            "| request | median (s) | max (s) |",
            "|---|---|---|",
            *(f"| {name} | {statistics.median(v):.3f} | {max(v):.3f} |" for name, v in rows),
        ]
    )
    write_results("ui_speed", result, table)
    print(table)


if __name__ == "__main__":
    main()

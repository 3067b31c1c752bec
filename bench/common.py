"""What both benchmarks share: where results go, and how a result is written (JSON + Markdown)."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SENTIMENT_RECIPE = ROOT / "recipes" / "sentiment-smollm2-qlora.yaml"


def machine() -> dict[str, Any]:
    """The hardware a number was measured on; a speed without it means little."""
    cpu = next(
        (line.split(":", 1)[1].strip() for line in _lines("/proc/cpuinfo") if line.startswith("model name")),
        platform.processor(),
    )
    mem_kb = next((int(line.split()[1]) for line in _lines("/proc/meminfo") if line.startswith("MemTotal")), 0)
    return {
        "cpu": cpu,
        "torch_threads": torch.get_num_threads(),
        "memory_gib": round(mem_kb / 2**20, 1),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def _lines(path: str) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except OSError:
        return []


def write_results(name: str, result: dict[str, Any], table: str) -> tuple[Path, Path]:
    """bench/results/<name>.json (everything) and <name>.md (the table people read)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    as_json, as_md = RESULTS / f"{name}.json", RESULTS / f"{name}.md"
    as_json.write_text(json.dumps(result, indent=2) + "\n")
    as_md.write_text(table + "\n")
    return as_json, as_md

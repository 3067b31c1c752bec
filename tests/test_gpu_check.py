"""bench/gpu_check.py in its CI mode (tiny models on the CPU), so the GPU check cannot rot between GPU runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def test_gpu_check_runs_every_path_on_tiny_models(tmp_path: Path, default_model_dir: Path) -> None:
    out = tmp_path / "gpu_check.json"
    env = os.environ | {"PYTHONPATH": str(REPO)}
    command = [sys.executable, str(REPO / "bench" / "gpu_check.py"), "--device", "cpu", "--tiny", "--out", str(out)]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and report["tiny"] and set(report["models"]) == {"llama-1b", "qwen2-0.5b"}
    for model in report["models"].values():
        assert {"ftkit-4bit", "ftkit-8bit", "ftkit-none"} <= set(model["train"])
        assert all(run["input_tokens_per_s"] > 0 for run in model["train"].values())
        assert set(model["eval"]) == {"base", "adapter"} or len(model["eval"]) == 2
        assert model["merge"]["merge_exactness"] < 1e-3
        assert model["serve"]["completion_tokens"] >= 1


def test_gpu_check_without_a_gpu_says_so() -> None:
    env = os.environ | {"PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu_check.py")], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert done.returncode == 2 and "--device cpu --tiny" in done.stdout

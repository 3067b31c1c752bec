"""The live server both HTTP test modules call: the tiny Llama with two random adapters on a loopback port.

One adapter is given as a run directory, one as an adapter folder, so the three systems answer differently
and quickly; requests need the Bearer key `KEY`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ftkit.serving import runtime
from ftkit.serving.server import Limits, create_app
from ftkit.serving.targets import resolve_targets
from tests.live_server import serving
from tests.tiny_adapters import make_adapter, make_run

KEY = "test-key-123"


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> runtime.Deployment:
    """The tiny Llama with adapter `alpha` (a run directory) and `beta` (an adapter folder), computing in
    float32: with random weights, logits tie within bf16 rounding often enough that greedy replies could
    differ between any two ways of computing them (even `generate` with and without its KV cache)."""
    root = tmp_path_factory.mktemp("serve")
    alpha = make_run(root, tiny_model_dir, "alpha", seed=1)
    beta = make_adapter(root / "beta", tiny_model_dir, seed=2)
    targets, base = resolve_targets([alpha, beta])
    return runtime.load(targets, base.model_copy(update={"compute_dtype": "float32"}))


@pytest.fixture(scope="module")
def base_url(deployment: runtime.Deployment) -> Iterator[str]:
    app = create_app(deployment, api_key=KEY, limits=Limits(max_new_tokens=32, max_body_bytes=20_000))
    with serving(app, "/health") as url:
        yield url

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
def base_url(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[str]:
    root = tmp_path_factory.mktemp("serve")
    alpha = make_run(root, tiny_model_dir, "alpha", seed=1)
    beta = make_adapter(root / "beta", tiny_model_dir, seed=2)
    deployment = runtime.load(*resolve_targets([alpha, beta]))
    app = create_app(deployment, api_key=KEY, limits=Limits(max_new_tokens=32, max_body_bytes=20_000))
    with serving(app, "/health") as url:
        yield url

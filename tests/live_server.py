"""A real uvicorn server on a free loopback port, in a thread, for tests that speak HTTP to an app."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from ftkit.serving.server import bind, server


@contextmanager
def serving(app: Any, ready_path: str) -> Iterator[str]:
    """Serve `app` until the block ends; yields its base URL once `ready_path` answers 200."""
    sock = bind("127.0.0.1", 0)
    uvicorn_server = server(app, log_level="warning")
    thread = threading.Thread(target=uvicorn_server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}{ready_path}", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.05)
    else:
        pytest.fail(f"the server did not answer {ready_path} within 20 s")
    try:
        yield url
    finally:
        uvicorn_server.should_exit = True
        thread.join(timeout=10)
        sock.close()

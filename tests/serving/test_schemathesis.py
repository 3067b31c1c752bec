"""`ftkit serve` fuzzed from its own OpenAPI schema with schemathesis: no 5xx, every error in the OpenAI shape.

The live server of `conftest.py` (tiny model, two adapters, 32 new tokens at most) answers requests that
schemathesis generates from `/openapi.json`, positive and negative, with the key and without. Bounded in
examples per operation so the whole file runs in well under a minute on 2 cores.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.serving.conftest import KEY


@pytest.fixture(scope="module")
def api_schema(base_url: str) -> Any:
    return schemathesis.openapi.from_url(f"{base_url}/openapi.json")


def _openai_error(body: Any) -> bool:
    error = body.get("error") if isinstance(body, dict) else None
    return isinstance(error, dict) and isinstance(error.get("message"), str) and isinstance(error.get("type"), str)


CASES = settings(
    max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None
)


def test_no_server_errors_and_every_error_in_the_openai_shape(api_schema: Any) -> None:
    """Each operation's generated cases, driven by hypothesis through `as_strategy` (schemathesis's pytest
    plugin does not run under pytest 9: it reads a private `Function._nodeid`)."""
    calls: list[int] = []
    for result in api_schema.get_all_operations():
        operation = result.ok()

        @CASES
        @given(case=operation.as_strategy())
        def call(case: Any) -> None:
            headers = {"Authorization": f"Bearer {KEY}"} if case.operation.path != "/health" else {}
            response = case.call(headers=headers, timeout=60)
            calls.append(response.status_code)
            shown = (case.method, case.path, response.status_code, response.text[:300])
            assert response.status_code < 500, shown
            if response.status_code >= 400:
                assert _openai_error(response.json()), shown

        call()
    print("schemathesis status codes:", sorted(Counter(calls).items()))
    assert len(calls) >= 40 and any(code < 400 for code in calls) and any(code >= 400 for code in calls), calls


def test_requests_without_the_key_are_401_in_the_openai_shape(api_schema: Any, base_url: str) -> None:
    import httpx

    for operation in api_schema.get_all_operations():
        op = operation.ok()
        if op.path == "/health":
            continue
        response = httpx.request(op.method.upper(), f"{base_url}{op.path}", json={}, timeout=30)
        assert response.status_code == 401 and _openai_error(response.json()), (op.path, response.text[:200])

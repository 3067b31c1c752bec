"""`ftkit serve`: a real uvicorn server on a loopback port, called with the `openai` client and httpx.

The served model is the tiny Llama with two random adapters (one given as a run directory, one as
an adapter folder), so the three systems answer differently and quickly.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from openai import OpenAI
from openai.types.chat import ChatCompletionMessageParam

from ftkit.cli import main
from ftkit.serving.server import bind
from ftkit.serving.targets import DeployError, Target, shared_base
from tests.serving.conftest import KEY

HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hello, how are you?"}]


@pytest.fixture(scope="module")
def client(base_url: str) -> OpenAI:
    return OpenAI(base_url=f"{base_url}/v1", api_key=KEY, max_retries=0)


def complete(client: OpenAI, model: str, **kwargs):
    return client.chat.completions.create(
        model=model, **{"messages": HELLO, "max_tokens": 8, "temperature": 0, **kwargs}
    )


def test_models_lists_the_base_and_each_adapter_by_run_name(client: OpenAI) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == ["base", "alpha", "beta"]
    assert {m.owned_by for m in models.data} == {"ftkit"}


def test_each_adapter_answers_differently_with_usage_and_length_finish(client: OpenAI) -> None:
    replies = {name: complete(client, name) for name in ("base", "alpha", "beta")}
    texts = {name: r.choices[0].message.content for name, r in replies.items()}
    assert len(set(texts.values())) == 3, texts
    for name, reply in replies.items():
        assert reply.model == name and reply.object == "chat.completion"
        assert reply.choices[0].finish_reason == "length"
        assert reply.usage.completion_tokens == 8
        assert reply.usage.total_tokens == reply.usage.prompt_tokens + 8
    assert len({r.usage.prompt_tokens for r in replies.values()}) == 1  # one prompt, one template
    assert complete(client, "alpha").choices[0].message.content == texts["alpha"], "greedy is deterministic"


def test_streaming_gives_the_same_text_as_a_whole_reply(client: OpenAI) -> None:
    for name in ("base", "beta"):
        whole = complete(client, name)
        chunks = list(complete(client, name, stream=True, stream_options={"include_usage": True}))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == whole.choices[0].message.content
        assert chunks[0].choices[0].delta.role == "assistant"
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
        assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
        assert len({c.id for c in chunks}) == 1


def test_stop_strings_end_the_reply_before_them(client: OpenAI) -> None:
    full = complete(client, "alpha").choices[0].message.content
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    expected = full[: full.index(stop)]
    reply = complete(client, "alpha", stop=[stop])
    assert (reply.choices[0].message.content, reply.choices[0].finish_reason) == (expected, "stop")
    streamed = "".join(c.choices[0].delta.content or "" for c in complete(client, "alpha", stop=stop, stream=True))
    assert streamed == expected


def test_sampling_with_a_seed_is_reproducible(client: OpenAI) -> None:
    first, second = (complete(client, "beta", temperature=1.0, top_p=0.9, seed=7) for _ in range(2))
    assert first.choices[0].message.content == second.choices[0].message.content


def test_concurrent_greedy_answers_equal_sequential_ones_and_keep_their_adapter(client: OpenAI, deployment) -> None:
    asks: list[tuple[str, list[ChatCompletionMessageParam]]] = [
        (name, [{"role": "user", "content": question}])
        for name, question in [
            ("alpha", "Hi"),
            ("beta", "Where is my parcel? It is two weeks late."),
            ("base", "Can I change the address?"),
            ("alpha", "My card was charged twice for one order. What now?"),
        ]
    ]

    def answer(ask: tuple[str, list[ChatCompletionMessageParam]]) -> str:
        chunks = complete(client, ask[0], messages=ask[1], max_tokens=32, stream=True)
        return "".join(c.choices[0].delta.content or "" for c in chunks)

    sequential = [answer(ask) for ask in asks]
    deployment.batcher.widest = 0
    with ThreadPoolExecutor(max_workers=len(asks)) as pool:
        concurrent = list(pool.map(answer, asks))
    assert concurrent == sequential
    assert deployment.batcher.widest >= 2, "the requests shared decode steps"


def error_of(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and {"message", "type", "param", "code"} <= set(body["error"]), body
    assert body["error"]["message"]
    return body["error"]


def post(
    base_url: str, body: object, *, key: str | None = KEY, raw: bytes | Iterable[bytes] | None = None
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if raw is not None:
        return httpx.post(
            f"{base_url}/v1/chat/completions", content=raw, headers=headers | {"Content-Type": "application/json"}
        )
    return httpx.post(f"{base_url}/v1/chat/completions", json=body, headers=headers)


def test_unknown_model_is_404_model_not_found(base_url: str) -> None:
    error = error_of(post(base_url, {"model": "gamma", "messages": HELLO}), 404)
    assert (error["code"], error["param"], error["type"]) == ("model_not_found", "model", "invalid_request_error")
    assert "alpha" in error["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "alpha"}, "messages"),
        ({"model": "alpha", "messages": []}, "messages"),
        ({"model": "alpha", "messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role"),
        ({"model": "alpha", "messages": [{"role": "user", "content": 3}]}, "messages.0.content"),
        ({"model": "alpha", "messages": HELLO, "temperature": 5}, "temperature"),
        ({"model": "alpha", "messages": HELLO, "n": 2}, "n"),
        ({"model": "alpha", "messages": HELLO, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ],
)
def test_invalid_requests_are_400_naming_the_field(base_url: str, body: dict, param: str) -> None:
    error = error_of(post(base_url, body), 400)
    assert error["param"] == param and error["message"].startswith(param)


def test_malformed_json_is_400(base_url: str) -> None:
    error = error_of(post(base_url, None, raw=b'{"model": "alpha", "messages": ['), 400)
    assert "not valid JSON" in error["message"]


def test_body_over_the_limit_is_413_with_or_without_a_declared_length(base_url: str) -> None:
    big = json.dumps({"model": "alpha", "messages": [{"role": "user", "content": "x" * 25_000}]}).encode()
    declared = post(base_url, None, raw=big)
    chunked = post(base_url, None, raw=iter([big[:10_000], big[10_000:]]))  # no Content-Length
    for response in (declared, chunked):
        error = error_of(response, 413)
        assert error["code"] == "request_too_large" and "20000 bytes" in error["message"]


def test_a_body_that_is_not_a_json_object_is_400(base_url: str) -> None:
    response = httpx.post(
        f"{base_url}/v1/chat/completions", content=b"[1, 2]", headers={"Authorization": f"Bearer {KEY}"}
    )
    assert "must be a JSON object" in error_of(response, 400)["message"]


def test_max_tokens_over_the_server_limit_is_400(base_url: str) -> None:
    error = error_of(post(base_url, {"model": "alpha", "messages": HELLO, "max_tokens": 33}), 400)
    assert error["param"] == "max_tokens" and "at most 32" in error["message"]


def test_prompt_longer_than_the_context_is_400(base_url: str) -> None:
    long = [{"role": "user", "content": "word " * 600}]  # the tiny model's context is 512 tokens
    error = error_of(post(base_url, {"model": "alpha", "messages": long}), 400)
    assert error["code"] == "context_length_exceeded" and "512" in error["message"]


@pytest.mark.parametrize("key", [None, "wrong-key"])
def test_missing_or_wrong_api_key_is_401(base_url: str, key: str | None) -> None:
    error = error_of(post(base_url, {"model": "alpha", "messages": HELLO}, key=key), 401)
    assert error["code"] == "invalid_api_key" and KEY not in json.dumps(error)
    error_of(httpx.get(f"{base_url}/v1/models", headers={"Authorization": f"Bearer {key}"}), 401)


def test_unknown_route_is_404_in_the_same_shape(base_url: str) -> None:
    assert error_of(httpx.get(f"{base_url}/v1/nothing"), 404)["code"] == "not_found"


def test_health_needs_no_key(base_url: str) -> None:
    assert httpx.get(f"{base_url}/health").json() == {"status": "ok", "models": ["base", "alpha", "beta"]}


def test_adapters_of_different_bases_are_refused_before_loading(tmp_path: Path, tiny_model_dir: Path) -> None:
    from ftkit.recipe import ModelConfig

    targets = [
        Target("a", ModelConfig(source=str(tiny_model_dir)), tmp_path),
        Target("b", ModelConfig(source="default"), tmp_path),
    ]
    with pytest.raises(DeployError, match="one process serves adapters of one base model"):
        shared_base(targets, None)


def test_an_adapter_served_on_a_differently_quantized_base_is_warned_about(
    tmp_path: Path, tiny_model_dir: Path, caplog
) -> None:
    from ftkit.recipe import ModelConfig

    trained = Target("a", ModelConfig(source=str(tiny_model_dir), quantization="none"), tmp_path)
    assert shared_base([trained], "4bit").quantization == "4bit"
    assert "'a' was trained with quantization none and runs with 4bit" in caplog.text
    caplog.clear()
    assert shared_base([trained], None).quantization == "none" and not caplog.text


def test_serve_with_a_folder_that_is_no_target_is_one_error_line(tmp_path: Path, capsys) -> None:
    assert main(["serve", str(tmp_path), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a run directory" in err and str(tmp_path) in err


def test_a_taken_port_is_a_clear_error() -> None:
    from ftkit.serving.server import ServeError

    taken = bind("127.0.0.1", 0)
    with pytest.raises(ServeError, match="choose another --port"):
        bind("127.0.0.1", taken.getsockname()[1])
    taken.close()

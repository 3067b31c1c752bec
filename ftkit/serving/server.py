"""`ftkit serve`: the base model and its adapters behind an OpenAI-compatible HTTP API.

FastAPI parses and validates requests, uvicorn speaks HTTP. `/v1/chat/completions` (streamed as
server-sent events or not) answers with the system named by the request's `model`; `/v1/models`
lists them. Every error, including FastAPI's own validation errors, has OpenAI's shape
`{"error": {"message", "type", "param", "code"}}`, so OpenAI clients show the message.

Concurrent requests are decoded together: the deployment's `Batcher` runs every reply in flight
as a row of one batch, each row with its own adapter, seed and stop strings, in one decode thread.
Handlers only wait for text (in worker threads), so the event loop stays free for health checks,
new connections and validation.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ftkit.errors import FtkitError
from ftkit.serving import runtime
from ftkit.serving.batcher import Sampling
from ftkit.serving.stream import Reply, ReplyStream
from ftkit.serving.targets import resolve_targets

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1_000_000
MAX_MESSAGES = 256
MAX_STOP_STRINGS = 4

# The request's `Authorization: Bearer <key>`, None when absent (not an error: a server may run without a key).
# Module-level, so FastAPI can resolve the annotation of `authorize` in create_app.
BearerCredentials = Annotated[HTTPAuthorizationCredentials | None, Depends(HTTPBearer(auto_error=False))]


class ServeError(FtkitError):
    """A server that cannot start (port taken, bad limits)."""


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields such as `name`

    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart]

    @field_validator("content", mode="before")
    @classmethod
    def _text(cls, content: Any) -> Any:
        """One clear message instead of one per member of the union."""
        parts_ok = isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content)
        if isinstance(content, str) or parts_ok:
            return content
        raise ValueError('must be a string or a list of {"type": "text", "text": ...} parts')

    def as_turn(self) -> dict[str, str]:
        text = self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)
        return {"role": self.role, "content": text}


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatRequest(BaseModel):
    """The subset of OpenAI's chat completion request that a local model can honour.

    Unknown fields are ignored like OpenAI-compatible servers do; `n` above 1 and sampling values
    out of OpenAI's ranges are refused instead of being silently changed.
    """

    model_config = ConfigDict(extra="ignore")

    model: str
    messages: list[Message] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(default=None, ge=1, le=1)

    @field_validator("stop")
    @classmethod
    def _stops(cls, stop: str | list[str] | None) -> list[str]:
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if len(stops) > MAX_STOP_STRINGS or not all(stops):
            raise ValueError(f"give at most {MAX_STOP_STRINGS} non-empty strings")
        return stops


class ApiError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass
class Limits:
    max_new_tokens: int = 512
    max_body_bytes: int = MAX_BODY_BYTES


def sampling_for(request: ChatRequest, prompt_tokens: int, context: int, limits: Limits) -> Sampling:
    """The request's sampling settings, or a 400 naming the parameter that does not fit."""
    asked = request.max_completion_tokens or request.max_tokens
    param = "max_completion_tokens" if request.max_completion_tokens else "max_tokens"
    if asked is not None and asked > limits.max_new_tokens:
        raise ApiError(
            400,
            f"{param} is {asked}; this server allows at most {limits.max_new_tokens} "
            "(ftkit serve --max-new-tokens-limit)",
            param=param,
        )
    room = context - prompt_tokens
    if room < 1 or (asked is not None and asked > room):
        wanted = f" + {param} {asked}" if asked is not None else ""
        raise ApiError(
            400,
            f"the prompt is {prompt_tokens} tokens{wanted}, over the model's context of {context} "
            "tokens; shorten the messages or ask for fewer tokens",
            param="messages",
            code="context_length_exceeded",
        )
    return Sampling(
        max_new_tokens=asked or min(limits.max_new_tokens, room),
        temperature=1.0 if request.temperature is None else request.temperature,  # OpenAI's default
        top_p=1.0 if request.top_p is None else request.top_p,
        seed=request.seed,
        stop=tuple(request.stop or ()),
    )


def create_app(deployment: runtime.Deployment, *, api_key: str | None = None, limits: Limits | None = None) -> Any:
    """The FastAPI application serving `deployment`; `api_key` (if any) is required as a Bearer token."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException

    limits = limits or Limits()
    started = int(time.time())
    app = FastAPI(title="ftkit serve", max_body_size=limits.max_body_bytes)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, error: ApiError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, error: RequestValidationError) -> JSONResponse:
        return await api_error(_, validation_error(error.errors()))

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, error: HTTPException) -> JSONResponse:
        if error.status_code == 413:
            return await api_error(_, too_large(limits.max_body_bytes))
        codes = {404: "not_found", 405: "method_not_allowed"}
        return await api_error(_, ApiError(error.status_code, str(error.detail), code=codes.get(error.status_code)))

    @app.exception_handler(Exception)
    async def server_error(_: Request, error: Exception) -> JSONResponse:
        log.error("request failed", exc_info=error)
        return await api_error(_, ApiError(500, "the server failed to answer; see its log", kind="server_error"))

    def authorize(credentials: BearerCredentials) -> None:
        if api_key is None:
            return
        given = credentials.credentials.encode() if credentials else b""
        if not hmac.compare_digest(given, api_key.encode()):
            raise ApiError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'", code="invalid_api_key")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "models": deployment.names}

    @app.get("/v1/models", dependencies=[Depends(authorize)])
    async def models() -> dict[str, Any]:
        data = [{"id": name, "object": "model", "created": started, "owned_by": "ftkit"} for name in deployment.names]
        return {"object": "list", "data": data}

    @app.post("/v1/chat/completions", dependencies=[Depends(authorize)], response_model=None)
    async def chat_completions(request: ChatRequest) -> Any:
        if request.model not in deployment.adapters:
            raise ApiError(
                404,
                f"model '{request.model}' is not served here; available: {', '.join(deployment.names)}",
                param="model",
                code="model_not_found",
            )
        prompt = render(deployment, request)
        stream = deployment.reply(request.model, prompt, sampling_for(request, len(prompt), deployment.context, limits))
        completion = Completion(request.model)
        if request.stream:
            usage = bool(request.stream_options and request.stream_options.include_usage)
            events = sse(request.model, stream, completion, usage)
            return StreamingResponse(events, media_type="text/event-stream")
        await run_in_threadpool(lambda: list(stream))
        log_reply(request.model, stream.reply)
        return completion.whole(stream.reply)

    return DeclaredBodyLimit(app, limits.max_body_bytes)


class DeclaredBodyLimit:
    """Answer a body whose Content-Length is over the limit with a 413 in OpenAI's shape, unread.

    Starlette's limiter (FastAPI's `max_body_size`, which counts bodies sent without a length)
    answers declared oversize bodies in plain text, outside the app's error handlers.
    """

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        from starlette.datastructures import Headers
        from starlette.responses import JSONResponse

        declared = Headers(scope=scope).get("content-length", "") if scope["type"] == "http" else ""
        if declared.isdigit() and int(declared) > self.limit:
            await JSONResponse(too_large(self.limit).body(), status_code=413)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def too_large(limit: int) -> ApiError:
    return ApiError(413, f"the request body is over {limit} bytes", code="request_too_large")


def validation_error(errors: Sequence[Any]) -> ApiError:
    """FastAPI's validation errors as one OpenAI-style 400 naming the first bad field."""
    first = errors[0]
    if first["type"] == "json_invalid":
        return ApiError(400, f"the request body is not valid JSON: {first.get('ctx', {}).get('error', 'decode error')}")
    where = ".".join(str(part) for part in first["loc"] if part != "body")
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    if not where:
        return ApiError(400, "the request body must be a JSON object, sent with 'Content-Type: application/json'")
    return ApiError(400, f"{where}: {first['msg']}{more}", param=where)


def render(deployment: runtime.Deployment, request: ChatRequest) -> list[int]:
    """The prompt tokens, or a 400 when the model's chat template refuses the messages (some templates
    insist on alternating user/assistant turns)."""
    from jinja2 import TemplateError

    try:
        return runtime.prompt_ids(deployment.tokenizer, [message.as_turn() for message in request.messages])
    except TemplateError as error:
        raise ApiError(400, f"the model's chat template rejects these messages: {error}", param="messages") from None


class Completion:
    """Builds OpenAI's response objects for one request (one id, one timestamp)."""

    def __init__(self, model: str) -> None:
        self.model, self.id, self.created = model, f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

    def _head(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    @staticmethod
    def usage(reply: Reply) -> dict[str, int]:
        total = reply.prompt_tokens + reply.completion_tokens
        return {
            "prompt_tokens": reply.prompt_tokens,
            "completion_tokens": reply.completion_tokens,
            "total_tokens": total,
        }

    def whole(self, reply: Reply) -> dict[str, Any]:
        message = {"role": "assistant", "content": reply.text}
        choice = {"index": 0, "message": message, "finish_reason": reply.finish_reason, "logprobs": None}
        return self._head("chat.completion") | {"choices": [choice], "usage": self.usage(reply)}

    def chunk(self, delta: dict[str, str], finish_reason: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
        return event(self._head("chat.completion.chunk") | {"choices": [choice]})

    def usage_chunk(self, reply: Reply) -> str:
        return event(self._head("chat.completion.chunk") | {"choices": [], "usage": self.usage(reply)})


def event(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


async def sse(name: str, stream: ReplyStream, completion: Completion, include_usage: bool) -> AsyncIterator[str]:
    """The reply as server-sent events, ending with `data: [DONE]`.

    A client that disconnects cancels this generator while a worker thread waits for the next
    token; closing the reply stream then takes its row out of the batch, so the decode steps of
    the other replies no longer pay for it.
    """
    import anyio
    from starlette.concurrency import iterate_in_threadpool

    pieces = iter(stream)
    try:
        yield completion.chunk({"role": "assistant", "content": ""})
        async for piece in iterate_in_threadpool(pieces):
            yield completion.chunk({"content": piece})
        yield completion.chunk({}, stream.reply.finish_reason)
        if include_usage:
            yield completion.usage_chunk(stream.reply)
        log_reply(name, stream.reply)
    except Exception:  # headers are sent: the client learns of the failure in the stream
        log.exception("generation failed")
        yield event(ApiError(500, "the server failed to answer; see its log", kind="server_error").body())
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(pieces.close)
    yield "data: [DONE]\n\n"


def log_reply(name: str, reply: Reply) -> None:
    log.info(
        "%s: %d prompt + %d completion tokens in %.2f s (%.1f tokens/s, %s)",
        name,
        reply.prompt_tokens,
        reply.completion_tokens,
        reply.seconds,
        reply.tokens_per_s,
        reply.finish_reason,
    )


def bind(host: str, port: int) -> socket.socket:
    """Bind the listening socket before loading the model, so a taken port fails in a second, not
    after the model loaded; port 0 picks a free one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise ServeError(
            f"cannot listen on {host}:{port} ({error.strerror}); choose another --port or --host"
        ) from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def server(app: Any, *, log_level: str = "info") -> Any:
    """A uvicorn server for `app`; `.run(sockets=[bind(...)])` serves until stopped (`should_exit`)."""
    import uvicorn

    return uvicorn.Server(uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5))


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def serve(
    paths: Sequence[Path],
    *,
    host: str,
    port: int,
    api_key_env: str,
    max_new_tokens_limit: int,
    quantization: str | None,
) -> int:
    """`ftkit serve`: bind, load the base and adapters, and answer until Ctrl-C."""
    if max_new_tokens_limit < 1:
        raise ServeError(f"--max-new-tokens-limit must be at least 1 (got {max_new_tokens_limit})")
    api_key = os.environ.get(api_key_env) or None
    if api_key is None and not is_loopback(host):
        log.warning(
            "warning: listening on %s without an API key: anyone who can reach it can use it; set %s to require one",
            host,
            api_key_env,
        )
    found, base = resolve_targets(paths, quantization)
    with bind(host, port) as sock:
        deployment = runtime.load(found, base)
        app = create_app(deployment, api_key=api_key, limits=Limits(max_new_tokens=max_new_tokens_limit))
        address = f"http://{host if ':' not in host else f'[{host}]'}:{sock.getsockname()[1]}/v1"
        key_note = (
            f"API key required (from ${api_key_env})" if api_key else f"no API key (set ${api_key_env} to require one)"
        )
        log.info(
            "serving %s at %s; %s; context %d tokens",
            ", ".join(deployment.names),
            address,
            key_note,
            deployment.context,
        )
        server(app).run(sockets=[sock])
    return 0

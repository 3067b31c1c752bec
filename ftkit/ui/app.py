"""`ftkit ui`: the FastAPI application over one runs root, and the command that serves it.

Pages (HTML, server-rendered by `pages.py`): `/` runs, `/run/<rel>` a run, `/run/<rel>/examples`,
`/run/<rel>/chat`, `/compare?run=a&run=b`, `/new` (start a run). JSON and streams for the page
scripts: `/api/runs`, `/api/run/<rel>/log?since=<byte offset>` (new `train_log.jsonl` rows, polled
while a run trains), `POST /api/chat/<rel>` (an OpenAI-shaped chat request, answered as `ftkit serve`
streams it). `<rel>` is a run's path below the root. Every request passes `security.Guard` first;
every refusal is a 4xx with a one-line reason, never a traceback.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, urlencode

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from ftkit.errors import FtkitError
from ftkit.runs import MANIFEST, RunDir
from ftkit.serving import server
from ftkit.serving.server import is_loopback
from ftkit.ui import examples, pages
from ftkit.ui.catalog import Catalog, RunSummary, read_json, state_of, summarize
from ftkit.ui.chat import Chats
from ftkit.ui.launcher import Launcher, LaunchError
from ftkit.ui.security import COOKIE, HEADER, Guard, Refused, inside, new_token

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
MAX_BODY = 100_000
MAX_LOG_CHUNK = 1 << 20
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self'; style-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


class UiError(FtkitError):
    """`ftkit ui` cannot start (no such runs folder, port taken)."""


def create_app(root: Path, *, token: str, host: str = "127.0.0.1", recipes: Path | None = None) -> Any:
    """The UI's FastAPI app over the runs below `root`; `host` is where it listens (loopback or not);
    the Start form takes recipes below `recipes` (default: the current folder) or below `root`."""
    root = root.resolve()
    guard = Guard(token=token, host=host)
    catalog, launcher, chats = Catalog(root), Launcher(root, (recipes or Path.cwd()).resolve()), Chats()
    preflights: dict[tuple[Path, float], str] = {}
    app = FastAPI(title="ftkit ui", docs_url=None, redoc_url=None, openapi_url=None, max_body_size=MAX_BODY)

    def refusal(request: Request, status: int, message: str) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": message}, status_code=status, headers=HEADERS)
        shown = token if status not in (401, 421) else ""  # a refused reader never sees the token
        return HTMLResponse(pages.error_page(status, message, shown), status_code=status, headers=HEADERS)

    @app.exception_handler(Refused)
    async def refused(request: Request, error: Refused) -> Response:
        return refusal(request, error.status, error.message)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> Response:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return refusal(request, 400, f"bad request: {where or 'body'}: {first.get('msg', 'invalid')}")

    @app.exception_handler(server.ApiError)
    async def api_error(request: Request, error: server.ApiError) -> Response:
        return refusal(request, error.status, error.message)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> Response:
        return refusal(request, error.status_code, str(error.detail))

    @app.exception_handler(Exception)
    async def failed(request: Request, error: Exception) -> Response:
        log.error("request failed", exc_info=error)
        return refusal(request, 500, "the UI failed to answer; see its log")

    @app.middleware("http")
    async def check(request: Request, call_next: Any) -> Response:
        try:
            guard.check_host(request.headers.get("host"))
            bearer = request.headers.get("authorization", "").removeprefix("Bearer ").strip() or None
            query = request.query_params.get("token")
            guard.check_read(request.cookies.get(COOKIE), bearer, query)
            declared = request.headers.get("content-length", "0")
            if not declared.isdigit() or int(declared) > MAX_BODY:
                raise Refused(413, f"the request body is over {MAX_BODY} bytes")
        except Refused as error:
            return refusal(request, error.status, error.message)
        if query is not None and guard.matches(query) and request.method == "GET":
            rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
            target = request.url.path + ("?" + urlencode(rest) if rest else "")
            response: Response = RedirectResponse(target, status_code=303)
            response.set_cookie(COOKIE, token, httponly=True, samesite="strict")
            return response
        response = await call_next(request)
        response.headers.update(HEADERS)
        return response

    async def form_of(request: Request) -> dict[str, list[str]]:
        """A url-encoded form (parsed here: no multipart dependency for four fields)."""
        body = await request.body()
        try:
            return parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError:
            raise Refused(400, "the form is not UTF-8") from None

    async def authorize_write(request: Request, form: dict[str, list[str]] | None = None) -> None:
        origin = request.headers.get("origin") or request.headers.get("referer")
        given = (form or {}).get("token", [None])[0]
        guard.check_write(request.headers.get(HEADER), given, origin, request.headers.get("host"))

    def run_at(rel: str) -> RunDir:
        run = RunDir(inside(root, rel))
        if not run.recipe.is_file() and str(run.path) not in launcher.launches:  # a launch writes it soon
            raise Refused(404, f"no run directory {rel!r} below the runs root")
        return run

    def summary(run: RunDir) -> RunSummary:
        return summarize(root, run.path, launcher.exit_codes())

    def html(text: str, status: int = 200) -> HTMLResponse:
        return HTMLResponse(text, status_code=status)

    @app.get("/static/{name}")
    async def static(name: str) -> Response:
        if name not in {"ui.js", "ui.css"}:
            raise Refused(404, f"not found: {name!r}")
        return FileResponse(STATIC / name)

    @app.get("/")
    async def runs_page() -> HTMLResponse:
        return html(pages.runs_page(await run_in_threadpool(catalog.runs, launcher.exit_codes()), token))

    @app.get("/api/runs")
    async def runs_json() -> JSONResponse:
        found = await run_in_threadpool(catalog.runs, launcher.exit_codes())
        return JSONResponse([asdict(r) for r in found])

    @app.get("/api/run/{rel:path}/log")
    async def train_log(rel: str, since: int = 0) -> JSONResponse:
        run = run_at(rel)
        if since < 0:
            raise Refused(400, "since: a byte offset, 0 or more")
        rows, offset = read_log(run.train_log, since)
        return JSONResponse({"rows": rows, "next": offset, "state": state_of(run, launcher.exit_codes())})

    @app.get("/file/{rel:path}")
    async def file(rel: str) -> Response:
        path = inside(root, rel)
        if path.suffix != ".png" or not path.is_file():
            raise Refused(404, f"not found: {rel!r} (only the runs' PNG plots are served)")
        return FileResponse(path, media_type="image/png")

    @app.get("/run/{rel:path}/examples")
    async def examples_page(rel: str, kind: str = "all", q: str = "", page: int = 0) -> HTMLResponse:
        run = run_at(rel)
        if kind not in ("all", *examples.KINDS):
            raise Refused(400, f"kind: one of all, {', '.join(examples.KINDS)}")
        if page < 0 or len(q) > 500:
            raise Refused(400, "page: 0 or more; q: at most 500 characters")
        source = next((p for p in (run.predictions, run.eval.predictions) if p.is_file()), None)
        if source is None:
            raise Refused(404, f"{rel} has no predictions.jsonl yet (it is written by the evaluation)")
        result = await run_in_threadpool(examples.page, source, kind=kind, query=q, number=page)
        return html(pages.examples_page(summary(run), result, kind, q, page, token))

    @app.get("/run/{rel:path}/preflight")
    async def preflight(rel: str) -> PlainTextResponse:
        run = run_at(rel)
        if not run.recipe.is_file():  # a run the UI just launched, before `ftkit train` writes its recipe
            raise Refused(409, f"{rel} has no recipe.yaml yet (ftkit train writes it first); try again in a moment")
        key = (run.path, run.recipe.stat().st_mtime)
        if key not in preflights:
            try:
                preflights[key] = await run_in_threadpool(preflight_report, run)
            except FtkitError as error:
                return PlainTextResponse(f"ftkit data cannot run on this recipe now: {error}", status_code=422)
        return PlainTextResponse(preflights[key])

    @app.get("/run/{rel:path}/chat")
    async def chat_page(rel: str) -> HTMLResponse:
        run = run_at(rel)
        try:
            names = await run_in_threadpool(chats.names, run.path)
        except FtkitError as error:
            raise Refused(409, str(error).splitlines()[0]) from None
        return html(pages.chat_page(summary(run), names, token))

    @app.post("/api/chat/{rel:path}", response_model=None)
    async def chat(rel: str, request: Request) -> Response:
        await authorize_write(request)
        run = run_at(rel)
        try:
            body = server.ChatRequest.model_validate_json(await request.body())
        except ValidationError as error:
            raise Refused(400, "bad chat request: " + server.validation_error(error.errors()).message) from None
        try:
            deployment = await run_in_threadpool(chats.deployment, run.path)
        except FtkitError as error:
            raise Refused(409, str(error).splitlines()[0]) from None
        response: Response = chats.reply(deployment, body)
        return response

    @app.post("/run/{rel:path}/stop")
    async def stop(rel: str, request: Request) -> Response:
        await authorize_write(request, await form_of(request))
        run = run_at(rel)
        if not launcher.stop(run):
            raise Refused(409, f"{rel} is not a run this UI started and is running; stop it where it was started")
        return RedirectResponse(pages.url(rel), status_code=303)

    @app.get("/run/{rel:path}")
    async def run_page(rel: str) -> HTMLResponse:
        run = run_at(rel)
        return html(await run_in_threadpool(render_run, run))

    def render_run(run: RunDir) -> str:
        found = summary(run)
        folder = run if run.metrics.is_file() else run.eval
        metrics = read_json(folder.metrics)
        plots = sorted(p.relative_to(root).as_posix() for p in (*run.path.glob("*.png"), *run.eval.path.glob("*.png")))
        manifest = read_json(run.adapter / MANIFEST) or {}
        launch = launcher.launches.get(str(run.path))
        return pages.run_page(
            found,
            token=token,
            metrics=metrics,
            recipe_text=run.recipe.read_text(encoding="utf-8", errors="replace") if run.recipe.is_file() else "",
            plots=[p.removeprefix(found.rel + "/") for p in plots],
            lineage=manifest.get("lineage"),
            log_tail=launcher.log_tail(run),
            stoppable=launch is not None and launch.exit_code is None,
        )

    @app.get("/compare")
    async def compare(run: Annotated[list[str], Query()] = []) -> HTMLResponse:  # noqa: B006 - FastAPI copies it
        from ftkit.evaluation.compare import compare_runs

        everything = await run_in_threadpool(catalog.runs, launcher.exit_codes())
        chosen = run
        text = error = None
        if chosen:
            paths = [run_at(rel).path for rel in chosen]
            try:
                text = await run_in_threadpool(compare_runs, paths)
            except FtkitError as failure:
                error = str(failure)
        return html(pages.compare_page(everything, chosen, text, error, token))

    @app.get("/new")
    async def start_form() -> HTMLResponse:
        return html(pages.start_page(token, {}, [], launcher.known_recipes()))

    @app.post("/new")
    async def start(request: Request) -> Response:
        form = await form_of(request)
        await authorize_write(request, form)
        values = {k: v[0] for k, v in form.items() if k != "token" and v}
        mode = values.get("mode", "new")
        if mode not in ("new", "overwrite", "resume"):
            raise Refused(400, "mode: one of new, overwrite, resume")
        overrides = [line.strip() for line in values.get("overrides", "").splitlines() if line.strip()]
        try:
            launch = await run_in_threadpool(
                launcher.start, values.get("recipe", ""), overrides, values.get("name", ""), mode
            )
        except LaunchError as error:
            return html(pages.start_page(token, values, error.problems, launcher.known_recipes()), status=422)
        return RedirectResponse(pages.url(launch.run.path.relative_to(root).as_posix()), status_code=303)

    return app


def read_log(path: Path, since: int) -> tuple[list[dict[str, Any]], int]:
    """The complete JSONL rows written after byte `since`, and the offset to ask from next time."""
    try:
        with path.open("rb") as handle:
            handle.seek(since)
            chunk = handle.read(MAX_LOG_CHUNK)
    except OSError:
        return [], since
    complete = chunk[: chunk.rfind(b"\n") + 1]
    rows = []
    for line in complete.splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows, since + len(complete)


def preflight_report(run: RunDir) -> str:
    """`ftkit data` on the run's resolved recipe: its report, as the terminal shows it."""
    from ftkit.data.preflight import render_report
    from ftkit.data.prepared import prepare
    from ftkit.recipe import load_recipe

    recipe = load_recipe(run.recipe, [])
    return render_report(recipe, prepare(recipe))


def serve_ui(runs: Path, *, host: str, port: int, recipes: Path) -> int:
    """`ftkit ui`: check the runs folder, bind, print the address (with the token beyond loopback), serve."""
    from ftkit.ui.security import TOKEN_ENV

    if not runs.is_dir():
        raise UiError(f"--runs {runs}: no such folder; train a run first (ftkit train RECIPE writes runs/<name>/)")
    token = new_token()
    with server.bind(host, port) as sock:
        shown = host if ":" not in host else f"[{host}]"
        address = f"http://{shown}:{sock.getsockname()[1]}/"
        if is_loopback(host):
            print(f"ftkit ui: {address} (runs below {runs.resolve()}); this machine only", file=sys.stderr)
        else:
            print(
                f"ftkit ui: {address}?token={token} (runs below {runs.resolve()}); every request needs this token "
                f"(set ${TOKEN_ENV} to choose it)",
                file=sys.stderr,
            )
        app = create_app(runs, token=token, host=host, recipes=recipes)
        server.server(app, log_level="warning").run(sockets=[sock])
    return 0

"""`ftkit ui` refuses what it must: paths out of the runs root, requests without the token beyond
loopback, cross-site and tokenless state changes, foreign Host headers, and malformed requests, all
with a 4xx; nothing outside the root is ever read.

Traversal is sent over a raw socket to the real server (HTTP clients normalise `..` away); the rest
goes through the real app with Starlette's TestClient.
"""

from __future__ import annotations

import random
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient

from ftkit.ui.app import create_app
from tests.live_server import serving
from tests.ui.conftest import TOKEN

SECRET = "TOP-SECRET-OUTSIDE-THE-ROOT"
ORIGIN = "http://127.0.0.1:7860"


@pytest.fixture(scope="module")
def guarded(ui_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the fixture runs plus symlinks that point out of the root, and a secret beside it."""
    top = tmp_path_factory.mktemp("guarded")
    root = top / "runs"
    shutil.copytree(ui_root, root, symlinks=True, ignore=shutil.ignore_patterns("adapter", "checkpoints"))
    outside = top / "outside"
    outside.mkdir()
    (outside / "secret.png").write_text(SECRET)
    (outside / "recipe.yaml").write_text(f"name: {SECRET}\n")
    (outside / "train_log.jsonl").write_text(f'{{"step": 1, "loss": 1, "note": "{SECRET}"}}\n')
    (root / "linked-run").symlink_to(outside, target_is_directory=True)
    (root / "sentiment-r4" / "leak.png").symlink_to(outside / "secret.png")
    return root


@pytest.fixture(scope="module")
def raw_url(guarded: Path) -> Iterator[str]:
    with serving(create_app(guarded, token=TOKEN), "/api/runs") as url:
        yield url


def raw_get(url: str, target: str) -> tuple[int, bytes]:
    """GET `target` exactly as written (no client normalises it); the status and the whole answer."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as conn:
        conn.sendall(f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1]), data


TRAVERSALS = [
    "/run/../../../../etc/passwd",
    "/run/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/run/..%2f..%2f..%2fetc%2fpasswd",
    "/run/sentiment-r4/../../outside",
    "/run/%2e%2e%2foutside",
    "/run/..%5c..%5coutside",
    "/run/linked-run",
    "/run/linked-run/examples",
    "/api/run/linked-run/log?since=0",
    "/api/run/..%2foutside/log?since=0",
    "/file/../outside/secret.png",
    "/file/%2e%2e/outside/secret.png",
    "/file/..%2foutside%2fsecret.png",
    "/file/%2fetc%2fpasswd",
    "/file//etc/passwd",
    "/file/sentiment-r4/leak.png",
    "/file/linked-run/secret.png",
    "/file/sentiment-r4/metrics.png%00.png",
    "/run/sentiment-r4%00/examples",
    "/static/..%2f..%2fapp.py",
    "/static/../app.py",
]


@pytest.mark.parametrize("target", TRAVERSALS)
def test_paths_out_of_the_root_are_404_and_read_nothing(raw_url: str, target: str) -> None:
    status, answer = raw_get(raw_url, target)
    assert 400 <= status < 500, (target, status)
    assert SECRET.encode() not in answer and b"root:x:" not in answer


def test_the_catalog_does_not_follow_a_symlinked_run_out_of_the_root(guarded: Path) -> None:
    client = TestClient(create_app(guarded, token=TOKEN), base_url=ORIGIN)
    listed = client.get("/api/runs").json()
    assert "linked-run" not in {run["rel"] for run in listed} and SECRET not in client.get("/").text
    assert client.get("/file/sentiment-r4/metrics.png").status_code == 200, "the root's own plots are served"


@pytest.fixture(scope="module")
def exposed(guarded: Path) -> TestClient:
    """The app as it runs with --host 0.0.0.0."""
    return TestClient(create_app(guarded, token=TOKEN, host="0.0.0.0"), base_url="http://10.1.2.3:7860")


@pytest.mark.parametrize("path", ["/", "/run/sentiment-r4", "/api/runs", "/file/sentiment-r4/metrics.png", "/new"])
def test_beyond_loopback_every_read_needs_the_token(exposed: TestClient, path: str) -> None:
    exposed.cookies.clear()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Cookie": "ftkit_ui_token=wrong"}):
        answer = exposed.get(path, headers=headers)
        assert answer.status_code == 401 and TOKEN not in answer.text
    assert exposed.get(path, params={"token": "wrong"}).status_code == 401
    assert exposed.get(path, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_the_token_in_the_address_becomes_a_strict_cookie(exposed: TestClient) -> None:
    exposed.cookies.clear()
    first = exposed.get("/run/sentiment-r4", params={"token": TOKEN}, follow_redirects=False)
    assert first.status_code == 303 and first.headers["location"] == "/run/sentiment-r4"
    cookie = first.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert exposed.get("/run/sentiment-r4").status_code == 200  # the cookie alone now


def test_a_foreign_host_header_on_loopback_is_refused(guarded: Path) -> None:
    rebinding = TestClient(create_app(guarded, token=TOKEN), base_url="http://evil.example:7860")
    answer = rebinding.get("/")
    assert answer.status_code == 421 and TOKEN not in answer.text


@pytest.mark.parametrize(
    ("headers", "form_token"),
    [
        ({"Origin": "http://evil.example"}, TOKEN),  # cross-site, even with the token
        ({"Origin": "null"}, TOKEN),
        ({}, TOKEN),  # no Origin nor Referer
        ({"Origin": ORIGIN}, None),  # same site, no token
        ({"Origin": ORIGIN}, "wrong"),
        ({"Referer": "http://evil.example/page"}, TOKEN),
    ],
)
def test_state_changes_need_the_token_and_this_origin(
    guarded: Path, headers: dict[str, str], form_token: str | None
) -> None:
    client = TestClient(create_app(guarded, token=TOKEN), base_url=ORIGIN)
    form = {"recipe": str(guarded / "sentiment-r4" / "recipe.yaml"), "name": "evil-run", "mode": "new"}
    form |= {"token": form_token} if form_token else {}
    for path, data in (("/new", form), ("/run/sentiment-r4/stop", form), ("/api/chat/sentiment-r4", None)):
        answer = client.post(path, data=data, headers=headers) if data else client.post(path, json={}, headers=headers)
        assert answer.status_code == 403, (path, answer.status_code, answer.text[:200])
    assert not (guarded / "evil-run").exists()


def test_a_valid_start_from_this_origin_is_accepted_but_a_bad_recipe_is_shown(guarded: Path) -> None:
    client = TestClient(create_app(guarded, token=TOKEN), base_url=ORIGIN)
    answer = client.post(
        "/new",
        data={
            "token": TOKEN,
            "recipe": str(guarded / "sentiment-r4" / "recipe.yaml"),
            "name": "x",
            "overrides": "trian.max_steps=3",
        },
        headers={"Origin": ORIGIN},
    )
    assert answer.status_code == 422 and "trian" in answer.text and "did you mean" in answer.text
    assert not (guarded / "x").exists()


JUNK = ["%", "%zz", "%00", "%ff%fe", "..", "%2e%2e", "\\", "~", "'", '"', "<script>", "a" * 3000, "é", "%c0%af", ";"]
BAD_BODIES = [b"", b"{", b"[]", b"null", b'{"model": 1}', b'{"model": "base", "messages": "x"}', b"\xff\xfe\x00"]
BAD_FORMS = [
    b"token=%ff%fe&name=x",
    b"token=" + TOKEN.encode() + b"&mode=bogus",
    b"token=" + TOKEN.encode() + b"&name=../x",
]


@pytest.mark.parametrize("recipe", ["/etc/passwd", "../../outside/recipe.yaml", "../linked-run/recipe.yaml"])
def test_the_start_form_reads_no_recipe_outside_its_folders(guarded: Path, recipe: str) -> None:
    client = TestClient(create_app(guarded, token=TOKEN, recipes=guarded / "sentiment-r4"), base_url=ORIGIN)
    answer = client.post("/new", data={"token": TOKEN, "recipe": recipe, "name": "x"}, headers={"Origin": ORIGIN})
    assert answer.status_code == 422 and "only recipes below" in answer.text and SECRET not in answer.text


def malformed_requests(count: int) -> Iterator[tuple[str, str, bytes]]:
    """Seeded junk, each request malformed one way: an odd path, a bad parameter value, a method the
    route does not take, a bad chat body or form."""
    rng = random.Random(16)
    kinds = [
        lambda: (
            "GET",
            rng.choice(["/run/", "/file/", "/static/", "/api/run/"]) + "".join(rng.choices(JUNK, k=2)),
            b"",
        ),
        lambda: ("GET", "/api/run/sentiment-r4/log?since=" + rng.choice(["-1", "abc", "1e99", "%00", ""]), b""),
        lambda: (
            "GET",
            "/run/sentiment-r4/examples?" + rng.choice(["kind=bogus", "page=-3", "page=x", "q=" + "x" * 600]),
            b"",
        ),
        lambda: ("GET", "/compare?run=" + rng.choice(["../etc", "%00", "missing", "/etc", "sentiment-r4/.."]), b""),
        lambda: (
            rng.choice(["PUT", "DELETE", "PATCH"]),
            rng.choice(["/", "/new", "/run/sentiment-r4", "/api/runs"]),
            b"",
        ),
        lambda: ("POST", "/api/chat/sentiment-r4", rng.choice(BAD_BODIES)),
        lambda: ("POST", "/new", rng.choice(BAD_FORMS)),
        lambda: ("POST", "/run/sentiment-r4/stop", b"token=" + TOKEN.encode()),  # not a run this UI started
    ]
    for _ in range(count):
        yield rng.choice(kinds)()


def test_hundreds_of_malformed_requests_are_all_4xx(guarded: Path) -> None:
    client = TestClient(create_app(guarded, token=TOKEN), base_url=ORIGIN, raise_server_exceptions=False)
    headers = {"Origin": ORIGIN, "X-Ftkit-Token": TOKEN}
    statuses: dict[int, int] = {}
    for method, target, body in malformed_requests(300):
        kind = "application/json" if "chat" in target else "application/x-www-form-urlencoded"
        answer = client.request(method, target, headers=headers | {"Content-Type": kind}, content=body)
        assert 400 <= answer.status_code < 500, (method, target[:80], body[:40], answer.status_code, answer.text[:200])
        assert "Traceback" not in answer.text and SECRET not in answer.text
        statuses[answer.status_code] = statuses.get(answer.status_code, 0) + 1
    assert len(statuses) >= 4, statuses  # 400, 404, 405, 409, 422 ...
    oversized = client.post("/new", headers=headers | {"Content-Length": "999999999"}, content=b"x")
    assert oversized.status_code == 413

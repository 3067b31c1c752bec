"""What keeps `ftkit ui` from reading or doing more than its user meant.

- Paths: a URL names a file by its path below the runs root; it is resolved (symlinks followed) and
  refused unless it is still below the root, so `..`, encoded `%2e%2e`, absolute paths and symlinks
  that point out all end in a 404 (the same answer as a missing file: nothing is said about what
  exists outside).
- The token: one per server (from $FTKIT_UI_TOKEN, else random, printed once at start). Beyond
  loopback every request needs it (`?token=` once, which sets a SameSite=Strict, HttpOnly cookie, or
  `Authorization: Bearer`); on loopback reading is open to local users, as `ftkit serve` is.
- State-changing requests (start, stop, chat) always need the token in the `X-Ftkit-Token` header
  or the form, and an `Origin` (or `Referer`) of this server: another site's page cannot post here,
  not even to a loopback server (it cannot read the token, and its Origin is its own).
- On loopback the `Host` header must name a loopback address: a DNS-rebinding page (evil.example
  resolving to 127.0.0.1) is refused before it can read anything.
Tokens are compared with `hmac.compare_digest` (constant time).
"""

from __future__ import annotations

import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from ftkit.serving.server import is_loopback

TOKEN_ENV = "FTKIT_UI_TOKEN"
COOKIE = "ftkit_ui_token"
HEADER = "x-ftkit-token"


class Refused(Exception):
    """A request the UI will not answer: `status` is 4xx, `message` says why in one line."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def new_token() -> str:
    """The server's token: $FTKIT_UI_TOKEN when set, else 32 random bytes."""
    return os.environ.get(TOKEN_ENV) or secrets.token_urlsafe(32)


def inside(root: Path, rel: str) -> Path:
    """`rel` below `root` with every symlink resolved, or a 404 when it is not inside it."""
    if "\x00" in rel or rel.startswith(("/", "\\")) or any(part == ".." for part in rel.replace("\\", "/").split("/")):
        raise Refused(404, f"not found: {rel!r}")
    path = (root / rel).resolve()
    if path != root and root not in path.parents:
        raise Refused(404, f"not found: {rel!r}")
    return path


@dataclass(frozen=True)
class Guard:
    """The checks every request passes; `host` is what the server listens on."""

    token: str
    host: str

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)

    def matches(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def check_host(self, host_header: str | None) -> None:
        """On loopback, refuse a Host header naming anything but a loopback address (DNS rebinding)."""
        if not self.loopback:
            return
        name = urlsplit(f"//{host_header or ''}").hostname or ""
        if not is_loopback(name):
            raise Refused(421, f"this server answers only to a loopback address, not {host_header!r}")

    def check_read(self, cookie: str | None, bearer: str | None, query: str | None) -> None:
        if self.loopback or any(self.matches(given) for given in (cookie, bearer, query)):
            return
        raise Refused(401, "missing or wrong token: open the address `ftkit ui` printed (…/?token=…)")

    def check_write(self, header: str | None, form: str | None, origin: str | None, host_header: str | None) -> None:
        """A state-changing request: the token, and an Origin (or Referer) that is this server."""
        if not (self.matches(header) or self.matches(form)):
            raise Refused(403, "missing or wrong token: reload the page `ftkit ui` printed and try again")
        if origin is None or urlsplit(origin).netloc != (host_header or ""):
            raise Refused(403, f"cross-site request refused (Origin {origin!r} is not this server)")

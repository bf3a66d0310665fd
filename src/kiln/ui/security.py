"""The page's guard, in front of every route: security headers, a Host/Origin check, the token, CSRF tokens.

- Headers: a Content-Security-Policy with no inline script or style (``script-src 'self'``), ``nosniff``, no
  framing, no referrer, and ``no-store`` on everything but the static files.
- DNS rebinding: a page served on a loopback address answers only requests whose Host names a loopback address
  (a rebinding site's requests carry its own name); a request with an Origin must come from the page's own origin.
- Token: when the server has one, every route but ``/login`` and ``/static`` needs ``Authorization: Bearer
  <token>`` (the scheme in any case) or the session cookie that ``/login`` sets once the token was entered; both
  compared in constant time. Pages redirect to ``/login``; API routes answer 401.
- CSRF: forms that change state carry a per-process token checked in constant time (:meth:`Guard.check_csrf`).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import quote, urlsplit

from .config import UiConfig

__all__ = ["COOKIE", "CSP", "Guard", "GuardMiddleware", "safe_next"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

COOKIE = "kiln_ui_session"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
]
_LOOPBACK_NAMES = {"localhost", "127.0.0.1", "[::1]", "::1"}
_OPEN_PATHS = ("/login", "/static/")


def _host_name(host: str) -> str:
    """``Host`` without its port (``[::1]:8765`` -> ``[::1]``), lowercased."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def safe_next(target: str | None) -> str:
    """A local path to go back to after login; anything else (another site, ``//host``, a scheme) becomes ``/``."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


class Guard:
    """The checks and secrets of one server process (the middleware and the login/write routes share it)."""

    def __init__(self, config: UiConfig) -> None:
        self.config = config
        self.csrf = secrets.token_urlsafe(32)
        token = config.token.encode() if config.token else None
        self._token = token
        # The cookie holds a value derived from the token, not the token itself.
        self.session = hmac.new(token, b"kiln-ui-session/1", hashlib.sha256).hexdigest() if token else None

    @property
    def needs_token(self) -> bool:
        return self._token is not None

    def token_matches(self, candidate: str) -> bool:
        return self._token is not None and hmac.compare_digest(candidate.encode("utf-8", "replace"), self._token)

    def authorized(self, headers: dict[bytes, bytes]) -> bool:
        if self._token is None:
            return True
        value = headers.get(b"authorization")
        if value is not None:
            scheme, _, credentials = value.partition(b" ")
            if scheme.lower() == b"bearer" and hmac.compare_digest(credentials.strip(), self._token):
                return True
        cookie = _cookie(headers.get(b"cookie", b""), COOKIE)
        return cookie is not None and self.session is not None and hmac.compare_digest(cookie, self.session.encode())

    def check_csrf(self, value: str | None) -> bool:
        return value is not None and hmac.compare_digest(value.encode("utf-8", "replace"), self.csrf.encode())

    def host_allowed(self, host: str) -> bool:
        if not self.config.loopback:
            return True  # reachable by name: the token guards it (a rebinding site never holds the cookie)
        return _host_name(host) in _LOOPBACK_NAMES

    def origin_allowed(self, origin: str, host: str) -> bool:
        parts = urlsplit(origin)
        return parts.scheme in ("http", "https") and parts.netloc.lower() == host.strip().lower()


def _cookie(header: bytes, name: str) -> bytes | None:
    for part in header.split(b";"):
        key, _, value = part.strip().partition(b"=")
        if key == name.encode():
            return value
    return None


class GuardMiddleware:
    """ASGI middleware applying a :class:`Guard` to every HTTP request (a plain ASGI callable: no body buffering)."""

    def __init__(self, app: App, guard: Guard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers: dict[bytes, bytes] = {}
        for key, value in scope["headers"]:
            headers.setdefault(key.lower(), value)
        path: str = scope["path"]
        static = path.startswith("/static/")

        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = list(_HEADERS)
                if not static:
                    extra.append((b"cache-control", b"no-store"))
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        host = headers.get(b"host", b"").decode("latin-1")
        origin = headers.get(b"origin")
        if not self.guard.host_allowed(host):
            await _plain(send_secured, 421, "This page answers only on 127.0.0.1 or localhost (Host was refused).")
            return
        if origin is not None and not self.guard.origin_allowed(origin.decode("latin-1"), host):
            await _plain(send_secured, 403, "Cross-origin request refused.")
            return
        if not path.startswith(_OPEN_PATHS) and not self.guard.authorized(headers):
            if path.startswith("/api/") or scope["method"] not in ("GET", "HEAD"):
                await _plain(send_secured, 401, "A token is needed: send Authorization: Bearer <token>.",
                             [(b"www-authenticate", b"Bearer")])  # fmt: skip
            else:
                query = scope.get("query_string", b"").decode("latin-1")
                target = quote(path + (f"?{query}" if query else ""), safe="")
                await _plain(send_secured, 303, "Log in first.", [(b"location", f"/login?next={target}".encode())])
            return
        await self.app(scope, receive, send_secured)


async def _plain(send: Send, status: int, text: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = text.encode()
    await send({
        "type": "http.response.start", "status": status,
        "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode()),
                    *(headers or [])],
    })  # fmt: skip
    await send({"type": "http.response.body", "body": body})

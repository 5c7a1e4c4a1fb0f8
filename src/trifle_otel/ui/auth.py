"""Access to the UI: optional bearer token or basic auth, a Host check on loopback, and
headers that keep the browser strict (no inline scripts, no framing, no sniffing).

The token is also accepted as the basic-auth password (any user name), so a browser,
which cannot send a bearer header when following a link, can still open the pages.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from typing import Any, Awaitable, Callable

Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Callable, Callable], Awaitable[None]]

SECURITY_HEADERS = [
    (b"content-security-policy",
     b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'none';"
     b" base-uri 'none'; form-action 'self'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


def is_loopback(host: str) -> bool:
    return host in LOOPBACK_HOSTS or host.startswith("127.")


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return ""


def _host_name(host: str) -> str:
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class Credentials:
    def __init__(self, token: str | None, basic: str | None) -> None:
        self.token = token or None
        self.basic = basic or None

    @property
    def required(self) -> bool:
        return bool(self.token or self.basic)

    def accepts(self, authorization: str) -> bool:
        scheme, _, value = authorization.partition(" ")
        scheme = scheme.lower()
        value = value.strip()
        if scheme == "bearer" and self.token:
            return hmac.compare_digest(value.encode(), self.token.encode())
        if scheme == "basic":
            try:
                decoded = base64.b64decode(value, validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                return False
            user, _, password = decoded.partition(":")
            if self.basic and hmac.compare_digest(decoded.encode(), self.basic.encode()):
                return True
            if self.token and hmac.compare_digest(password.encode(), self.token.encode()):
                return True
        return False


class Guard:
    """ASGI middleware in front of every route, static files included."""

    def __init__(self, app: ASGIApp, credentials: Credentials, *, loopback_only: bool) -> None:
        self.app = app
        self.credentials = credentials
        self.loopback_only = loopback_only

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.loopback_only and not is_loopback(_host_name(_header(scope, b"host"))):
            # A page elsewhere that rebinds its name to 127.0.0.1 must not read the UI.
            await _plain(send, 421, b"this UI answers only to 127.0.0.1 and localhost (set ui.listen to serve others)")
            return
        if self.credentials.required and not self.credentials.accepts(_header(scope, b"authorization")):
            await _plain(send, 401, b"authentication required: a bearer token or basic auth (ui.token, ui.basic_auth)",
                         [(b"www-authenticate", b'Basic realm="trifle-otel", charset="UTF-8"')])
            return

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {k.lower() for k, _ in headers}
                headers.extend(h for h in SECURITY_HEADERS if h[0] not in present)
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def _plain(send: Callable, status: int, body: bytes, extra: list[tuple[bytes, bytes]] = ()) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode()), *SECURITY_HEADERS, *extra]})
    await send({"type": "http.response.body", "body": body})

"""Who may read the review pages, and what a browser may do with them.

HTTP Basic auth (with `review.password`), only local Host names on a loopback bind, and headers
that forbid scripts, framing and foreign resources on every response.

Both checks wrap the whole application (pages, JSON, images, static files), so no route can
forget them. Credentials are compared with `secrets.compare_digest`, user and password both
always, so the time taken does not tell which one was wrong.

The Host check: a server on 127.0.0.1 without a password is still reachable by a web page the
operator happens to open, if that page's site re-resolves its own name to 127.0.0.1 (DNS
rebinding); the browser then sends that site's name as Host. Answering only to loopback names
(`localhost`, `127.0.0.1`, `[::1]`) defeats that. A reverse proxy in front must therefore send the
upstream address as Host (nginx does by default: `$proxy_host`).
"""

from __future__ import annotations

import base64
import binascii
import secrets

from starlette.datastructures import Headers, QueryParams
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.review.listen import is_loopback

REALM = "defed quarantine review"


def credentials_match(authorization: str | None, username: str, password: str) -> bool:
    """Whether an `Authorization` header carries exactly these Basic credentials."""
    if not authorization:
        return False
    scheme, _, encoded = authorization.partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    given_user, sep, given_password = decoded.partition(b":")
    if not sep:
        return False
    # Both comparisons run whatever the first one gave: `&`, not `and`.
    user_ok = secrets.compare_digest(given_user, username.encode())
    password_ok = secrets.compare_digest(given_password, password.encode())
    return user_ok & password_ok


def host_name(host_header: str) -> str:
    """The name in a Host header, without port or IPv6 brackets."""
    host = host_header.strip()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def wants_json(headers: Headers, format_param: str | None = None) -> bool:
    """`?format=json`, or an Accept header asking for JSON rather than HTML (a browser asks for HTML)."""
    accept = headers.get("accept", "")
    return format_param == "json" or ("application/json" in accept and "text/html" not in accept)


def refusal(scope: Scope, status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """A refusal from a guard, in JSON or plain text as the client asked."""
    if wants_json(Headers(scope=scope), QueryParams(scope.get("query_string", b"")).get("format")):
        return JSONResponse({"error": message, "status": status}, status, headers=headers)
    return PlainTextResponse(message + "\n", status, headers=headers)


class BasicAuth:
    """Every HTTP request needs the configured user and password."""

    def __init__(self, app: ASGIApp, username: str, password: str) -> None:
        self.app = app
        self.username = username
        self.password = password

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not credentials_match(
            Headers(scope=scope).get("authorization"), self.username, self.password
        ):
            challenge = {"WWW-Authenticate": f'Basic realm="{REALM}", charset="UTF-8"'}
            await refusal(scope, 401, "authentication required", challenge)(scope, receive, send)
            return
        await self.app(scope, receive, send)


class LoopbackHostOnly:
    """Requests whose Host is not a loopback name get 421 (the DNS-rebinding guard above)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = Headers(scope=scope).get("host", "")
            if not is_loopback(host_name(host)):
                message = (
                    f"Host {host!r} refused: this review server is bound to loopback and answers only to "
                    "localhost names; a reverse proxy must send the upstream address as Host"
                )
                await refusal(scope, 421, message)(scope, receive, send)
                return
        await self.app(scope, receive, send)


# Pages have no script at all; images and styles come from this server only. With autoescaped
# templates this is a second wall: even markup that slipped through could not run.
SECURITY_HEADERS = [
    (b"content-security-policy",
     b"default-src 'none'; img-src 'self'; style-src 'self'; form-action 'self'; base-uri 'none'; "
     b"frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


class SecurityHeaders:
    """Adds SECURITY_HEADERS to every HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers)

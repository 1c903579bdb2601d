"""Access token, CSRF protection and security headers of the dashboard."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from urllib.parse import urlsplit

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "CSRF_FIELD",
    "CSRF_HEADER",
    "TOKEN_COOKIE",
    "HostGuard",
    "OriginGuard",
    "SecurityHeaders",
    "TokenGuard",
    "csrf_token",
    "csrf_valid",
    "seal",
]

TOKEN_COOKIE = "localbroker_token"
TOKEN_HEADER = "x-localbroker-token"
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"
SESSION_FIELD = "sid"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

# No inline script or style: a payload that slips past escaping still cannot run.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


def seal(secret: bytes, value: str) -> str:
    """An HMAC of ``value`` under the app's ``secret``: what cookies hold instead of secrets.

    Browsers send a host's cookies to every port of it, so a page served on another port of
    127.0.0.1 receives them: they must not carry anything it could reuse elsewhere.
    """
    return hmac.new(secret, value.encode(), hashlib.sha256).hexdigest()


def _same(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


class TokenGuard:
    """Rejects every request that does not carry the token.

    The token is accepted as ``Authorization: Bearer <token>``, an ``X-Localbroker-Token``
    header, or the cookie set when a browser opens any page with ``?token=<token>`` (the
    token is then removed from the address by a redirect). The cookie holds an HMAC of the
    token under the app's secret, never the token itself.
    """

    def __init__(self, app: ASGIApp, token: str, secret: bytes) -> None:
        self.app = app
        self.token = token
        self.cookie = seal(secret, token)

    def _ok(self, given: str | None) -> bool:
        return _same(given, self.token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        auth = request.headers.get("authorization", "")
        bearer = auth[7:] if auth.lower().startswith("bearer ") else None
        if any(self._ok(v) for v in (bearer, request.headers.get(TOKEN_HEADER))) or _same(
            request.cookies.get(TOKEN_COOKIE), self.cookie
        ):
            await self.app(scope, receive, send)
            return
        if self._ok(request.query_params.get("token")):
            response: HTMLResponse | RedirectResponse = RedirectResponse(
                str(request.url.remove_query_params("token")), status_code=303
            )
            response.set_cookie(
                TOKEN_COOKIE, self.cookie, httponly=True, samesite="strict", path="/"
            )
        else:
            response = HTMLResponse(
                "<!doctype html><title>localbroker dashboard</title><h1>Token required</h1>"
                "<p>Open the address printed by <code>localbroker dashboard</code>, which ends "
                "in <code>?token=...</code>.</p>",
                status_code=401,
            )
        await response(scope, receive, send)


class SecurityHeaders:
    """Adds a strict Content-Security-Policy and related headers to every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("content-security-policy", CSP)
                headers.setdefault("x-content-type-options", "nosniff")
                # same-origin, not no-referrer: with no-referrer Chromium sends "Origin: null"
                # on the dashboard's own POSTs, which OriginGuard must refuse.
                headers.setdefault("referrer-policy", "same-origin")
                headers.setdefault("x-frame-options", "DENY")
            await send(message)

        await self.app(scope, receive, send_with_headers)


class OriginGuard:
    """Refuses every state-changing request (not GET, HEAD or OPTIONS) sent from another origin.

    The ``Origin`` header (or, when a browser sends none, the ``Referer``) must be the
    dashboard's own ``scheme://host:port``. ``SameSite`` cookies do not cover this: a page on
    another port of the same host is the *same site*, and its requests carry the dashboard's
    cookies. A request with neither header (not from a browser: curl, scripts) passes on to
    the CSRF and token checks.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in SAFE_METHODS:
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        own = f"{scope['scheme']}://{request.headers.get('host', '')}"
        origin = request.headers.get("origin")
        if origin is None and (referer := request.headers.get("referer")):
            parts = urlsplit(referer)
            origin = f"{parts.scheme}://{parts.netloc}"
        if origin is None or origin.lower() == own.lower():
            await self.app(scope, receive, send)
            return
        response = PlainTextResponse(
            f"refused: a {scope['method']} request from {origin}, not from this dashboard "
            f"({own}); actions are only taken from the dashboard's own pages",
            status_code=403,
        )
        await response(scope, receive, send)


class HostGuard:
    """Accepts only requests whose ``Host`` header names one of ``hosts`` (against DNS
    rebinding). IPv6 addresses are written in brackets (``[::1]:8765``) and compared
    without them."""

    def __init__(self, app: ASGIApp, hosts: list[str]) -> None:
        self.app = app
        self.hosts = {h.strip("[]").lower() for h in hosts}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        host = Request(scope).headers.get("host", "")
        name = _host_name(host)
        if name in self.hosts:
            await self.app(scope, receive, send)
            return
        response = PlainTextResponse(
            f"invalid Host header {host!r}: this dashboard answers to "
            f"{', '.join(sorted(self.hosts))}",
            status_code=400,
        )
        await response(scope, receive, send)


def _host_name(host: str) -> str:
    """The name or address of a ``Host`` header, without its port or IPv6 brackets."""
    if host.startswith("["):
        return host[1 : host.find("]")].lower() if "]" in host else host.lower()
    return host.rsplit(":", 1)[0].lower()


def csrf_token(request: Request) -> str:
    """This session's CSRF token: an HMAC of a random session id under the app's secret.

    The session cookie only holds the id, so a page that receives the cookie (another port of
    the same host) still cannot compute the token.
    """
    session_id = request.session.get(SESSION_FIELD)
    if not isinstance(session_id, str):
        session_id = request.session[SESSION_FIELD] = secrets.token_urlsafe(32)
    secret: bytes = request.app.state.secret
    return seal(secret, session_id)


def csrf_valid(request: Request, submitted: str | None) -> bool:
    """Whether a state-changing request carries this session's CSRF token and is not cross-site."""
    if request.headers.get("sec-fetch-site") == "cross-site":
        return False
    session_id = request.session.get(SESSION_FIELD)
    if not isinstance(session_id, str):
        return False
    secret: bytes = request.app.state.secret
    return _same(submitted or request.headers.get(CSRF_HEADER), seal(secret, session_id))

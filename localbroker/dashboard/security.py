"""Access token, CSRF protection and security headers of the dashboard."""

from __future__ import annotations

import hmac
import secrets

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "CSRF_FIELD",
    "CSRF_HEADER",
    "TOKEN_COOKIE",
    "SecurityHeaders",
    "TokenGuard",
    "csrf_token",
    "csrf_valid",
]

TOKEN_COOKIE = "localbroker_token"
TOKEN_HEADER = "x-localbroker-token"
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"

# No inline script or style: a payload that slips past escaping still cannot run.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


class TokenGuard:
    """Rejects every request that does not carry the token.

    The token is accepted as ``Authorization: Bearer <token>``, an ``X-Localbroker-Token``
    header, or the cookie set when a browser opens any page with ``?token=<token>`` (the
    token is then removed from the address by a redirect).
    """

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token

    def _ok(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), self.token.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        auth = request.headers.get("authorization", "")
        bearer = auth[7:] if auth.lower().startswith("bearer ") else None
        if any(
            self._ok(v)
            for v in (bearer, request.headers.get(TOKEN_HEADER), request.cookies.get(TOKEN_COOKIE))
        ):
            await self.app(scope, receive, send)
            return
        if self._ok(request.query_params.get("token")):
            response: HTMLResponse | RedirectResponse = RedirectResponse(
                str(request.url.remove_query_params("token")), status_code=303
            )
            response.set_cookie(
                TOKEN_COOKIE, self.token, httponly=True, samesite="strict", path="/"
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
                headers.setdefault("referrer-policy", "no-referrer")
                headers.setdefault("x-frame-options", "DENY")
            await send(message)

        await self.app(scope, receive, send_with_headers)


def csrf_token(request: Request) -> str:
    """This session's CSRF token (created on first use; kept in the signed session cookie)."""
    token = request.session.get(CSRF_FIELD)
    if not isinstance(token, str):
        token = request.session[CSRF_FIELD] = secrets.token_urlsafe(32)
    return token


def csrf_valid(request: Request, submitted: str | None) -> bool:
    """Whether a state-changing request carries this session's CSRF token and is not cross-site."""
    if request.headers.get("sec-fetch-site") == "cross-site":
        return False
    expected = request.session.get(CSRF_FIELD)
    given = submitted or request.headers.get(CSRF_HEADER)
    return (
        isinstance(expected, str)
        and given is not None
        and hmac.compare_digest(given.encode(), expected.encode())
    )

"""The dashboard as an ASGI application: ``create_app(data_dir)``."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from localbroker.dashboard import pages
from localbroker.dashboard.live import ChangeFeed
from localbroker.dashboard.queries import ThroughputMeter
from localbroker.dashboard.security import HostGuard, OriginGuard, SecurityHeaders, TokenGuard
from localbroker.dashboard.svg import segment
from localbroker.errors import ConfigurationError, NotFoundError
from localbroker.view import BrokerView

__all__ = ["Dashboard", "create_app"]

HERE = Path(__file__).parent


class Dashboard:
    """The state behind one dashboard app: the view of the data directory, the change feed."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.feed = ChangeFeed(data_dir)
        self.meter = ThroughputMeter()
        self._view: BrokerView | None = None
        # One reader at a time: the view's CommitLog is refreshed and read from threads.
        self._lock = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def reading(self) -> AsyncIterator[BrokerView]:
        """The view, opened on first use (so a mounted app needs no lifespan), held exclusively."""
        async with self._lock:
            if self._view is not None and self._view.index is None and self._index_appeared():
                await self._view.close()  # the broker created index.db since: reopen to use it
                self._view = None
            if self._view is None:
                view = BrokerView(self.data_dir)
                await view.open()
                self._view = view
            yield self._view

    def _index_appeared(self) -> bool:
        return (self.data_dir / "index.db").exists()

    async def close(self) -> None:
        await self.feed.close()
        async with self._lock:
            if self._view is not None:
                await self._view.close()
                self._view = None


def _time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.2f} ms"


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    if seconds < 120:
        return f"{max(seconds, 0):.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def _templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=HERE / "templates")  # autoescape on
    templates.env.filters.update(time=_time, ms=_ms, ago=_ago, segment=segment)
    return templates


async def _error_page(request: Request, exc: Exception) -> Response:
    status = 404 if isinstance(exc, NotFoundError) else 400
    return pages.render(request, "error.html", {"error": str(exc)}, status_code=status)


def create_app(
    data_dir: str | Path,
    *,
    token: str | None = None,
    secret_key: str | None = None,
    allowed_hosts: list[str] | None = None,
    stale_after: float = 10.0,
) -> Starlette:
    """The dashboard of the broker data directory ``data_dir``, as a Starlette app.

    It only reads the directory (the broker may run in another process) and follows its
    changes live. ``token``: required on every request when given. ``secret_key`` signs the
    session cookie and keys the HMACs that stand for the CSRF token and the access token in
    cookies (default: random per process, so cookies end with the process). ``allowed_hosts``:
    Host header values accepted (e.g. ``["127.0.0.1", "localhost", "::1"]`` against DNS
    rebinding). Every state-changing request must come from the dashboard's own origin.
    ``stale_after``: seconds after which a sync status not refreshed is shown as stale.

    Mount it inside an application's own ASGI app::

        from starlette.routing import Mount
        app.router.routes.append(Mount("/broker", app=create_app("./data")))
    """
    dashboard = Dashboard(Path(data_dir))
    secret = (secret_key or secrets.token_urlsafe(32)).encode()
    middleware = [Middleware(SecurityHeaders)]
    if allowed_hosts:
        middleware.append(Middleware(HostGuard, hosts=allowed_hosts))
    middleware.append(Middleware(OriginGuard))
    if token is not None:
        middleware.append(Middleware(TokenGuard, token=token, secret=secret))
    middleware.append(
        Middleware(
            SessionMiddleware,
            secret_key=secret.decode(),
            session_cookie="localbroker_session",
            same_site="strict",
        )
    )

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        yield
        await dashboard.close()

    app = Starlette(
        routes=[
            Route("/", pages.home),
            Route("/events", pages.events, name="events"),
            Route("/events/{offset:int}", pages.event, name="event"),
            Route("/chains", pages.chains, name="chains"),
            Route("/chains/{chain_id:path}", pages.chain, name="chain"),  # ids may hold "/"
            Route("/errors", pages.errors, name="errors"),
            Route("/dlq", pages.dlq, name="dlq"),
            Route("/dlq/{entry_id:int}", pages.dlq_entry, name="dlq_entry"),
            Route("/dlq/{action:str}", pages.dlq_action, methods=["POST"], name="dlq_action"),
            Route("/subscribers", pages.subscribers, name="subscribers"),
            Route("/analytics", pages.analytics, name="analytics"),
            Route("/system", pages.system, name="system"),
            Route("/live/{page:str}", pages.live, name="live"),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ],
        middleware=middleware,
        exception_handlers={NotFoundError: _error_page, ConfigurationError: _error_page},
        lifespan=lifespan,
    )
    app.state.dashboard = dashboard
    app.state.secret = secret
    app.state.stale_after = stale_after
    app.state.templates = _templates()
    app.state.data_dir = Path(data_dir)
    return app

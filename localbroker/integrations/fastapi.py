"""FastAPI and Starlette: the broker runs with the app; a request's chain id in its response.

Example::

    from fastapi import FastAPI
    from localbroker.integrations.fastapi import CorrelationIdMiddleware, lifespan

    broker = Broker("./data")
    broker.include_router(posts.router)
    app = FastAPI(lifespan=lifespan(broker))            # or lifespan(broker, app_lifespan)
    app.add_middleware(CorrelationIdMiddleware, broker=broker)

    @app.post("/posts", status_code=202)
    async def create(post: NewPost) -> dict[str, str]:
        await broker.publish(CreatePost(**post.model_dump()))
        return {"status": "accepted"}                 # X-Correlation-ID: the command's chain

Handlers take dependencies as FastAPI endpoints do, resolved per delivery by fast-depends
(``db: Session = Depends(get_session)``, with this module's :data:`Depends`); see
``docs/fastapi.md``.
"""

from __future__ import annotations

from localbroker.extras import require_extra

require_extra("localbroker.integrations.fastapi", "fastapi", "starlette", "fast_depends")

import contextlib
import contextvars
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

from fast_depends import Depends
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from localbroker.broker.broker import Broker
from localbroker.broker.middleware import Middleware, PublishNext
from localbroker.events import Event, PublishResult

__all__ = ["CorrelationIdMiddleware", "Depends", "lifespan"]

AppT = TypeVar("AppT")
Lifespan = Callable[[AppT], AbstractAsyncContextManager[Any]]


def lifespan(broker: Broker, app_lifespan: Lifespan[AppT] | None = None) -> Lifespan[AppT]:
    """A lifespan that starts ``broker`` with the app and closes it after, around
    ``app_lifespan`` (yours, if any), whose state it passes on.

    The broker starts first and closes last, so your lifespan may publish at startup and at
    shutdown. A broker that fails to start fails the app's startup with its error. The
    broker is started again by each run of the app (``with TestClient(app)`` twice).
    """

    @contextlib.asynccontextmanager
    async def run(app: AppT) -> AsyncIterator[Any]:
        async with broker:
            if app_lifespan is None:
                yield None
            else:
                async with app_lifespan(app) as state:
                    yield state

    return run


class _RequestChain:
    __slots__ = ("correlation_id",)

    def __init__(self) -> None:
        self.correlation_id: str | None = None


_request: contextvars.ContextVar[_RequestChain | None] = contextvars.ContextVar(
    "localbroker_request_chain", default=None
)


class _RecordCorrelation(Middleware):
    """Notes the chain of the first event a request publishes (outside handlers)."""

    async def publish(self, events: list[Event], call_next: PublishNext) -> list[PublishResult]:
        results = await call_next(events)
        request = _request.get()
        if request is not None and request.correlation_id is None and results:
            request.correlation_id = results[0].correlation_id
        return results


_RECORDER = _RecordCorrelation()


class CorrelationIdMiddleware:
    """ASGI middleware: a response carries the correlation id of the first event (a
    :class:`~localbroker.Command`, typically) its request published, in ``header``.

    Clients then follow the command's chain (``broker.chain(id)``, ``localbroker chain ID``).
    A response that sets the header itself keeps its own; a request that published nothing
    gets none. Works for ``publish`` awaited in the endpoint and ``publish_sync`` from a
    plain ``def`` endpoint; not for events published by background tasks after the response.

    Example: ``app.add_middleware(CorrelationIdMiddleware, broker=broker, header="X-Chain")``.
    """

    def __init__(self, app: ASGIApp, broker: Broker, header: str = "X-Correlation-ID") -> None:
        self.app = app
        self.header = header
        self._name = header.lower().encode("latin-1")
        broker.add_middleware(_RECORDER)  # the same object each time: added once

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = _RequestChain()
        token = _request.set(request)

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start" and request.correlation_id is not None:
                headers = list(message.get("headers", []))
                if all(name.lower() != self._name for name, _ in headers):
                    headers.append((self._name, request.correlation_id.encode("latin-1")))
                    message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_header)
        finally:
            _request.reset(token)

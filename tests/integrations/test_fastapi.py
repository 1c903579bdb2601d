"""localbroker.integrations.fastapi: the lifespan helper and the correlation id header."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from fastapi import FastAPI, Response
from fastapi.testclient import TestClient

from localbroker import Broker, Command, LogLockedError
from localbroker.integrations.fastapi import CorrelationIdMiddleware, lifespan
from localbroker.testing import TestBroker


class Signup(Command, topic="command.signup"):
    email: str


def make_app(broker: Broker, **middleware: str) -> tuple[FastAPI, list[str]]:
    steps: list[str] = []

    @contextlib.asynccontextmanager
    async def app_lifespan(app: FastAPI) -> AsyncIterator[dict[str, str]]:
        # The broker is running already: the app's own startup may publish.
        await broker.publish("app.started", {})
        steps.append("app up")
        yield {"greeting": "hi"}
        await broker.publish("app.stopping", {})  # and its shutdown too
        steps.append("app down")

    app = FastAPI(lifespan=lifespan(broker, app_lifespan))
    app.add_middleware(CorrelationIdMiddleware, broker=broker, **middleware)

    @app.post("/signup")
    async def signup(email: str) -> dict[str, str]:
        result = await broker.publish(Signup(email=email))
        await broker.publish("audit.signup", {"email": email})  # the first event's id is sent
        return {"id": result.id}

    @app.post("/signup-sync")
    def signup_sync(email: str) -> dict[str, str]:  # a def endpoint, in a worker thread
        return {"id": broker.publish_sync(Signup(email=email)).id}

    @app.post("/own-header")
    async def own_header(response: Response) -> None:
        await broker.publish(Signup(email="x@example.com"))
        response.headers["X-Correlation-ID"] = "mine"

    return app, steps


def test_the_broker_runs_around_the_apps_lifespan_and_requests_get_their_chain_id() -> None:
    broker = TestBroker()
    app, steps = make_app(broker)
    for run in range(2):  # the same app started twice, as two test modules would
        with TestClient(app) as client:
            assert steps[-1] == "app up"
            first = client.post("/signup", params={"email": "a@example.com"})
            assert first.headers["X-Correlation-ID"] == first.json()["id"]
            second = client.post("/signup-sync", params={"email": "b@example.com"})
            assert second.headers["X-Correlation-ID"] == second.json()["id"]
            assert second.headers["X-Correlation-ID"] != first.headers["X-Correlation-ID"]
            assert client.post("/own-header").headers["X-Correlation-ID"] == "mine"
            assert broker.log.next_offset == 5  # app.started + 2 + 1 + 1 signups
        assert steps == ["app up", "app down"] * (run + 1)


def test_the_header_name_is_configurable() -> None:
    broker = TestBroker()
    app, _ = make_app(broker, header="X-Chain")
    with TestClient(app) as client:
        response = client.post("/signup", params={"email": "a@example.com"})
    assert response.headers["X-Chain"] == response.json()["id"]
    assert "X-Correlation-ID" not in response.headers


async def test_a_broker_that_cannot_start_fails_the_apps_startup(tmp_path: Path) -> None:
    async with Broker(tmp_path):  # holds the writer lock
        app, steps = make_app(Broker(tmp_path))
        with pytest.raises(LogLockedError), TestClient(app):
            pass
    assert steps == []  # the app's own lifespan never ran

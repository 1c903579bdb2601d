"""The example blog (examples/blog): FastAPI + localbroker, through TestClient.

Two ordinary ``with TestClient(app)`` blocks on one module-level app: each starts the app's
broker again (a TestBroker: a fresh temporary directory each time, fake time for retries).
"""

from __future__ import annotations

from fastapi.testclient import TestClient

from examples.blog.app import create_app
from localbroker import RetryPolicy
from localbroker.testing import TestBroker

broker = TestBroker(max_tries=3, retry=RetryPolicy(backoff_initial=30))
app = create_app(broker)


def test_a_post_runs_its_chain_and_becomes_searchable() -> None:
    with TestClient(app) as client:
        response = client.post(
            "/posts", json={"title": "Hello broker", "body": "Events, on disk.", "author": "ann"}
        )
        assert response.status_code == 202
        chain_id = response.headers["X-Correlation-ID"]
        assert chain_id == response.json()["command_id"]  # the command starts its chain
        client.portal.call(broker.drain)  # the command, then post.created's two handlers
        assert client.get(f"/chains/{chain_id}").json() == [
            {"depth": 0, "topic": "command.create_post", "deliveries": {"posts": "done"}},
            {
                "depth": 1,
                "topic": "post.created",
                "deliveries": {"notify": "done", "search": "done"},
            },
        ]
        assert client.get("/posts", params={"q": "disk"}).json() == [
            {"id": 1, "title": "Hello broker", "author": "ann"}
        ]
        assert client.get("/notifications").json() == ["ann wrote 'Hello broker'"]
        assert "X-Correlation-ID" not in client.get("/posts").headers  # published nothing


def test_a_failing_handler_is_retried_then_shows_in_the_chain_and_the_dlq() -> None:
    with TestClient(app) as client:  # the second run of the same app and broker
        assert client.get("/posts").json() == []  # a fresh directory
        response = client.post(
            "/posts", json={"title": "Spam offer", "body": "cheap", "author": "bot"}
        )
        chain_id = response.headers["X-Correlation-ID"]
        client.portal.call(broker.drain)  # three tries 30 s apart, on fake time
        chain = client.get(f"/chains/{chain_id}").json()
        assert chain[1]["deliveries"] == {"notify": "dlq", "search": "done"}
        [entry] = client.portal.call(broker.dlq.list)
        assert (entry.subscriber, entry.tries) == ("notify", 3)
        assert "post 1 looks like spam" in entry.error
        assert client.get("/posts", params={"q": "cheap"}).json()[0]["title"] == "Spam offer"
        assert client.get("/chains/nope").status_code == 404

"""A blog application on a real broker, and the dashboard served over it."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette

from localbroker import Broker, Command, Event, RetryPolicy

SCRIPT = "<script>window.__pwned = 1</script>"


class CreatePost(Command, topic="blog.create_post"):
    title: str
    body: str


class PostCreated(Event, topic="blog.post_created"):
    post_id: str
    title: str
    body: str


class Comment(Event, topic="comment.added"):
    post_id: str
    text: str


class Blog:
    """A small app: a command makes a post, which fans out to a search index and comments.

    The ``comments`` subscriber fails while ``broken`` is true, so its events reach the DLQ.
    """

    def __init__(self, data_dir: Path, **options: Any) -> None:
        options.setdefault("retry", RetryPolicy.immediate())
        options.setdefault("start_from", "earliest")
        options.setdefault("max_tries", 2)
        options.setdefault("control_poll_interval", 0.05)
        self.broker = Broker(data_dir, **options)
        self.broken = True
        self.indexed: list[str] = []
        broker = self.broker

        @broker.subscriber("blog.create_post", name="posts")
        async def create(cmd: CreatePost) -> None:
            await broker.publish(
                PostCreated(post_id=cmd.id[:8], title=cmd.title, body=cmd.body, key=cmd.title)
            )

        @broker.subscriber("blog.*", name="search")
        async def index(event: Event) -> None:
            self.indexed.append(event.id)

        @broker.subscriber("blog.post_created", name="comments")
        async def first_comment(event: PostCreated) -> None:
            if self.broken:
                raise ValueError(f"comment store down for {event.title}")
            await broker.publish(Comment(post_id=event.post_id, text="first!"))

    async def post(self, title: str, body: str = "hello") -> str:
        """Publish a CreatePost command; its id (the chain's correlation id)."""
        return (await self.broker.publish(CreatePost(title=title, body=body))).id


async def fill(data_dir: Path) -> dict[str, str]:
    """Run the blog once: two posts (one with a <script> body), both dead-lettered by comments."""
    blog = Blog(data_dir)
    async with blog.broker:
        ids = {"first": await blog.post("first"), "script": await blog.post(SCRIPT, SCRIPT)}
        await blog.broker.wait_idle()
    return ids


@pytest.fixture
async def filled(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A data directory the blog has run on (no broker running any more)."""
    return tmp_path, await fill(tmp_path)


@contextlib.asynccontextmanager
async def client_for(app: Starlette, **kwargs: Any) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client calling the app in this event loop (no server)."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://127.0.0.1", **kwargs
    ) as client:
        yield client
    await app.state.dashboard.close()


@contextlib.contextmanager
def serve(app: Starlette) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free local port in a thread; yields its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started and thread.is_alive():
            threading.Event().wait(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()

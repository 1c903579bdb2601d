"""A small blog on FastAPI and localbroker.

``POST /posts`` publishes a ``CreatePost`` command and answers 202 with the command's chain id
in ``X-Correlation-ID``. The ``posts`` handler stores the post and publishes ``post.created``;
``search`` indexes its words and ``notify`` queues a notification, each in its own SQLite
session (a dependency, fresh per delivery). ``GET /chains/{id}`` shows where the chain stands.

Run it: ``pip install 'localbroker[fastapi]' uvicorn`` then
``uvicorn examples.blog.app:app`` (data in ``./blog-data``).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

from localbroker import Broker, Command, DeliveryContext, Event, NotFoundError, Router
from localbroker.integrations.fastapi import CorrelationIdMiddleware, Depends, lifespan


class CreatePost(Command, topic="command.create_post"):
    """Somebody asked to publish a post."""

    title: str
    body: str
    author: str


class PostCreated(Event, topic="post.created"):
    """A post was stored and is public."""

    post_id: int
    title: str
    body: str
    author: str


SCHEMA = """
CREATE TABLE IF NOT EXISTS posts (id INTEGER PRIMARY KEY, title TEXT, body TEXT, author TEXT,
                                  command_id TEXT UNIQUE);
CREATE TABLE IF NOT EXISTS words (word TEXT, post_id INTEGER, PRIMARY KEY (word, post_id));
CREATE TABLE IF NOT EXISTS notifications (post_id INTEGER PRIMARY KEY, text TEXT);
"""


class Settings:
    """Where the blog's own database lives: set when the app starts (see ``blog_lifespan``)."""

    db_path: Path | None = None


settings = Settings()


def get_db() -> Iterator[sqlite3.Connection]:
    """One session per delivery: committed if the handler returns, rolled back if it raises."""
    assert settings.db_path is not None, "the app is not running"
    # fast-depends runs a plain def dependency of an async handler in a worker thread: the
    # connection is made there and used by the handler (one delivery at a time).
    db = sqlite3.connect(settings.db_path, check_same_thread=False)
    try:
        yield db
        db.commit()
    except BaseException:
        db.rollback()
        raise
    finally:
        db.close()


router = Router()


@router.subscriber("command.create_post", name="posts")
async def create_post(
    cmd: CreatePost, ctx: DeliveryContext, db: sqlite3.Connection = Depends(get_db)
) -> None:
    # Idempotent: a redelivered command finds its post and publishes the event again.
    db.execute(
        "INSERT OR IGNORE INTO posts (title, body, author, command_id) VALUES (?, ?, ?, ?)",
        (cmd.title, cmd.body, cmd.author, cmd.id),
    )
    (post_id,) = db.execute("SELECT id FROM posts WHERE command_id = ?", (cmd.id,)).fetchone()
    db.commit()  # stored before anyone hears of it
    created = PostCreated(post_id=post_id, title=cmd.title, body=cmd.body, author=cmd.author)
    await ctx.broker.publish(created, key=str(post_id))


@router.subscriber("post.created", name="search")
async def index_post(event: PostCreated, db: sqlite3.Connection = Depends(get_db)) -> None:
    words = {w.strip(".,!?").lower() for w in f"{event.title} {event.body}".split()}
    db.executemany(
        "INSERT OR IGNORE INTO words VALUES (?, ?)", [(w, event.post_id) for w in words if w]
    )


@router.subscriber("post.created", name="notify")
async def notify(event: PostCreated, db: sqlite3.Connection = Depends(get_db)) -> None:
    if event.title.lower().startswith("spam"):
        raise ValueError(f"post {event.post_id} looks like spam: not announced")
    db.execute(
        "INSERT OR REPLACE INTO notifications VALUES (?, ?)",
        (event.post_id, f"{event.author} wrote {event.title!r}"),
    )


class NewPost(BaseModel):
    title: str
    body: str
    author: str


def create_app(broker: Broker) -> FastAPI:
    """The blog's API on ``broker`` (the application's, or a TestBroker in tests)."""
    broker.include_router(router)

    @contextlib.asynccontextmanager
    async def blog_lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Runs once the broker has started (lifespan() starts it first): its data directory
        # is known, a TestBroker's temporary one included.
        settings.db_path = broker.data_dir / "blog.db"
        with contextlib.closing(sqlite3.connect(settings.db_path)) as db:
            db.executescript(SCHEMA)
        yield
        settings.db_path = None

    app = FastAPI(title="blog", lifespan=lifespan(broker, blog_lifespan))
    app.add_middleware(CorrelationIdMiddleware, broker=broker)

    @app.post("/posts", status_code=202)
    async def post(new: NewPost) -> dict[str, str]:
        result = await broker.publish(CreatePost(**new.model_dump()))
        return {"command_id": result.id}

    @app.get("/posts")
    def posts(q: str | None = None) -> list[dict[str, Any]]:
        with contextlib.closing(sqlite3.connect(settings.db_path or ":memory:")) as db:
            query = "SELECT id, title, author FROM posts"
            args: tuple[str, ...] = ()
            if q:
                query += " WHERE id IN (SELECT post_id FROM words WHERE word = ?)"
                args = (q.lower(),)
            rows = db.execute(query + " ORDER BY id", args).fetchall()
        return [{"id": i, "title": t, "author": a} for i, t, a in rows]

    @app.get("/notifications")
    def notifications() -> list[str]:
        with contextlib.closing(sqlite3.connect(settings.db_path or ":memory:")) as db:
            return [text for (text,) in db.execute("SELECT text FROM notifications ORDER BY 1")]

    @app.get("/chains/{correlation_id}")
    async def chain(correlation_id: str) -> list[dict[str, Any]]:
        try:
            found = await broker.chain(correlation_id)
        except NotFoundError as exc:
            raise HTTPException(404, str(exc)) from exc
        return [
            {
                "depth": depth,
                "topic": node.event.topic,
                "deliveries": {d.subscriber: d.state for d in node.deliveries},
            }
            for depth, node in found.walk()
        ]

    return app


app = create_app(Broker(os.environ.get("BLOG_DATA", "./blog-data")))

"""Handler dependencies resolved per delivery by fast-depends, generators closed after the try."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator

import fastapi
import pytest
from fast_depends import Depends

from localbroker import ConfigurationError, DeliveryContext, Event, RetryPolicy
from localbroker.testing import TestBroker


class Post(Event, topic="post.created"):
    title: str


class Session:
    """Stands for a database session: opened per delivery, closed after it."""

    numbers = itertools.count(1)

    def __init__(self, log: list[str]) -> None:
        self.n = next(self.numbers)
        self.log = log
        self.closed = False
        log.append(f"open {self.n}")


async def test_each_try_gets_a_fresh_dependency_closed_when_the_try_ends() -> None:
    log: list[str] = []
    sessions: list[Session] = []

    async def get_session() -> AsyncIterator[Session]:
        session = Session(log)
        try:
            yield session
        except Exception as exc:
            log.append(f"rollback {session.n}: {exc}")
            raise
        finally:
            session.closed = True
            log.append(f"close {session.n}")

    broker = TestBroker(max_tries=3, retry=RetryPolicy(backoff_initial=1))

    @broker.subscriber("post.created", name="index")
    async def index(post: Post, ctx: DeliveryContext, db: Session = Depends(get_session)) -> None:
        sessions.append(db)
        assert not db.closed
        log.append(f"handle {post.title} with {db.n} (try {ctx.attempt})")
        if post.title == "bad" and ctx.attempt == 1:
            raise ValueError("index full")

    async with broker:
        await broker.publish(Post(title="bad"))
        await broker.publish(Post(title="good"))
        await broker.drain()
    first = sessions[0].n
    assert len({s.n for s in sessions}) == 3  # one session per try
    assert all(s.closed for s in sessions)
    assert log == [
        f"open {first}",
        f"handle bad with {first} (try 1)",
        f"rollback {first}: index full",
        f"close {first}",
        f"open {first + 1}",
        f"handle good with {first + 1} (try 1)",
        f"close {first + 1}",
        f"open {first + 2}",
        f"handle bad with {first + 2} (try 2)",
        f"close {first + 2}",
    ]


async def test_a_def_handler_gets_its_dependencies_in_its_thread() -> None:
    log: list[str] = []

    def get_session() -> Iterator[Session]:
        session = Session(log)
        yield session
        log.append(f"close {session.n}")

    broker = TestBroker()

    @broker.subscriber("post.created", name="notify")
    def notify(post: Post, db: Session = Depends(get_session)) -> None:
        log.append(f"notify {post.title} with {db.n}")

    async with broker:
        await broker.publish(Post(title="hi"))
        await broker.drain()
    n = int(log[0].split()[1])
    assert log == [f"open {n}", f"notify hi with {n}", f"close {n}"]


def test_fastapis_own_depends_is_refused_naming_the_parameter() -> None:
    broker = TestBroker()

    def get_session() -> None: ...

    async def handler(post: Post, db: None = fastapi.Depends(get_session)) -> None: ...

    with pytest.raises(ConfigurationError, match=r"parameter 'db' uses fastapi\.Depends"):
        broker.subscribe(handler, "post.created")

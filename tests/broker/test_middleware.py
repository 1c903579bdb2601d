"""Middleware around publishing and each delivery: order, changes, exceptions seen and raised."""

from __future__ import annotations

import threading

import pytest

from localbroker import (
    ConfigurationError,
    DeliverNext,
    DeliveryContext,
    Event,
    Middleware,
    PublishNext,
    PublishResult,
    RetryPolicy,
)
from localbroker.testing import TestBroker


class Note(Event, topic="note.added"):
    text: str


class Recorder(Middleware):
    """Records entering and leaving, and the exception it saw."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log

    async def publish(self, events: list[Event], call_next: PublishNext) -> list[PublishResult]:
        self.log.append(f"{self.name}.publish>{len(events)}")
        results = await call_next(events)
        self.log.append(f"{self.name}.publish<")
        return results

    async def deliver(self, event: Event, context: DeliveryContext, call_next: DeliverNext) -> None:
        self.log.append(f"{self.name}.deliver>{context.subscriber}#{context.attempt}")
        try:
            await call_next(event)
        except Exception as exc:
            self.log.append(f"{self.name}.saw {exc!r}")
            raise
        self.log.append(f"{self.name}.deliver<")


async def test_the_first_added_is_outermost_around_publish_and_delivery() -> None:
    log: list[str] = []
    outer, inner = Recorder("a", log), Recorder("b", log)
    broker = TestBroker(middleware=[outer])
    broker.add_middleware(inner)
    broker.add_middleware(outer)  # the same object again: no second layer
    assert broker.middleware == [outer, inner]

    @broker.subscriber("note.added", name="notes")
    async def handle(event: Note) -> None:
        log.append(f"handler {event.text}")

    async with broker:
        await broker.publish(Note(text="hi"))
        await broker.drain()
    assert log == [
        "a.publish>1",
        "b.publish>1",
        "b.publish<",
        "a.publish<",
        "a.deliver>notes#1",
        "b.deliver>notes#1",
        "handler hi",
        "b.deliver<",
        "a.deliver<",
    ]


class Stamp(Middleware):
    """Adds a header to what is published, and rewrites what handlers get."""

    async def publish(self, events: list[Event], call_next: PublishNext) -> list[PublishResult]:
        return await call_next(
            [e.model_copy(update={"headers": {**e.headers, "tenant": "t1"}}) for e in events]
        )

    async def deliver(self, event: Event, context: DeliveryContext, call_next: DeliverNext) -> None:
        assert isinstance(event, Note)
        await call_next(event.model_copy(update={"text": event.text.upper()}))


async def test_middleware_changes_what_is_stored_and_what_handlers_get() -> None:
    got: list[tuple[str, dict[str, str], str]] = []
    broker = TestBroker(middleware=[Stamp()])

    @broker.subscriber("note.added", name="notes")
    async def handle(event: Note, ctx: DeliveryContext) -> None:
        got.append((event.text, ctx.envelope["headers"], ctx.envelope["data"]["text"]))

    async with broker:
        sent = Note(text="hi")
        many = await broker.publish_many([Note(text="a"), Note(text="b")])
        one = await broker.publish(sent)
        await broker.drain()
    assert [r.offset for r in [*many, one]] == [0, 1, 2]
    assert one.id == sent.id  # the stored copy keeps the event's id and chain
    assert sorted(got) == [
        ("A", {"tenant": "t1"}, "a"),
        ("B", {"tenant": "t1"}, "b"),
        ("HI", {"tenant": "t1"}, "hi"),
    ]


async def test_a_handlers_exception_passes_through_every_middleware_and_fails_the_try() -> None:
    log: list[str] = []
    broker = TestBroker(
        middleware=[Recorder("a", log), Recorder("b", log)],
        max_tries=2,
        retry=RetryPolicy(backoff_initial=5),
    )

    @broker.subscriber("note.added", name="notes")
    async def handle(event: Note) -> None:
        raise ValueError("no room for notes")

    async with broker:
        await broker.publish(Note(text="hi"))
        await broker.drain()
        [entry] = await broker.dlq.list()
    assert entry.tries == 2
    assert "no room for notes" in entry.error
    saw = [line for line in log if "saw" in line]
    assert (
        saw
        == ["b.saw ValueError('no room for notes')", "a.saw ValueError('no room for notes')"] * 2
    )


class Refuse(Middleware):
    async def publish(self, events: list[Event], call_next: PublishNext) -> list[PublishResult]:
        if any("tenant" not in e.headers for e in events):
            raise PermissionError(f"{events[0].topic}: events need a tenant header")
        return await call_next(events)

    async def deliver(self, event: Event, context: DeliveryContext, call_next: DeliverNext) -> None:
        if context.attempt == 1:
            raise RuntimeError("auth service down")
        await call_next(event)


async def test_a_failing_middleware_refuses_the_publish_or_fails_the_try() -> None:
    handled: list[tuple[str, int, list[str]]] = []
    broker = TestBroker(middleware=[Refuse()])

    @broker.subscriber("note.added", name="notes")
    async def handle(event: Note, ctx: DeliveryContext) -> None:
        handled.append((event.text, ctx.attempt, ctx.previous_errors))

    async with broker:
        with pytest.raises(PermissionError, match=r"note\.added: events need a tenant"):
            await broker.publish(Note(text="no tenant"))
        with pytest.raises(PermissionError):
            await broker.publish_many([Note(text="ok", headers={"tenant": "t"}), Note(text="x")])
        assert broker.log.next_offset == 0  # nothing stored, the batch included
        await broker.publish(Note(text="ok", headers={"tenant": "t"}))
        await broker.drain()
    # The middleware's error was the first try's failure; the retry reached the handler.
    assert handled == [("ok", 2, ["RuntimeError('auth service down')"])]


async def test_delivery_middleware_runs_in_the_loop_around_a_def_handler() -> None:
    log: list[str] = []
    threads: list[str] = []
    broker = TestBroker(middleware=[Recorder("a", log)])

    @broker.subscriber("note.added", name="notes")
    def handle(event: Note) -> None:
        threads.append(threading.current_thread().name)
        log.append("handler")

    async with broker:
        await broker.publish(Note(text="hi"))
        await broker.drain()
    assert log[-3:] == ["a.deliver>notes#1", "handler", "a.deliver<"]
    assert threads[0].startswith("localbroker-handler-notes")


class Swallow(Middleware):
    async def publish(self, events: list[Event], call_next: PublishNext) -> list[PublishResult]:
        return []  # a bug: neither passes the events on nor returns results


async def test_a_publish_middleware_that_returns_no_result_is_named() -> None:
    async with TestBroker(middleware=[Swallow()]) as broker:
        with pytest.raises(ConfigurationError, match="returned no result for event"):
            await broker.publish(Note(text="hi"))
        assert broker.log.next_offset == 0

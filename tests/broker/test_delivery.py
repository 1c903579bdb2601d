"""Publishing and delivery: typed and untyped events, patterns, retries, timeouts, the DLQ."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import Counter
from pathlib import Path

import pytest

from localbroker import (
    Broker,
    ConfigurationError,
    DeliveryContext,
    Event,
    GenericEvent,
    NotFoundError,
    RejectEvent,
    RetryPolicy,
    SerializationError,
)
from tests.broker.events import Note, UserCreated, UserRenamed

FAST = RetryPolicy.immediate()


def make_broker(path: Path, **options) -> Broker:
    options.setdefault("retry", FAST)
    options.setdefault("start_from", "earliest")
    return Broker(path, **options)


async def test_typed_event_reaches_subscriber_with_envelope(tmp_path: Path) -> None:
    broker = make_broker(tmp_path)
    got: list[UserCreated] = []

    @broker.subscriber("user.created", name="email")
    async def welcome(event: UserCreated) -> None:
        got.append(event)

    async with broker:
        meta = await broker.publish(UserCreated(user_id="u1", name="Ann", key="u1"))
        await broker.wait_idle()
    assert meta.offset == 0
    assert meta.topic == "user.created"
    assert len(got) == 1
    event = got[0]
    assert isinstance(event, UserCreated)
    assert (event.id, event.user_id, event.name, event.key) == (meta.id, "u1", "Ann", "u1")
    assert event.correlation_id == meta.id  # an event outside any chain starts its own


async def test_untyped_publish_and_wildcards(tmp_path: Path) -> None:
    broker = make_broker(tmp_path)
    one: list[str] = []
    rest: list[str] = []

    @broker.subscriber("user.*", name="one-token")
    async def on_one(event: Event) -> None:
        one.append(event.topic)

    @broker.subscriber("user.>", name="the-rest")
    def on_rest(event: Event) -> None:  # a plain def runs in a thread
        rest.append(event.topic)

    async with broker:
        await broker.publish("user.login", {"user_id": "u1"})
        await broker.publish("user.profile.changed", {"field": "name"})
        await broker.publish("order.placed", {"order_id": "o1"})
        await broker.publish(UserRenamed(user_id="u1", name="Bo"))
        await broker.wait_idle()
    assert sorted(one) == ["user.login", "user.renamed"]
    assert sorted(rest) == ["user.login", "user.profile.changed", "user.renamed"]


async def test_untyped_handler_gets_generic_events_even_of_topics_with_a_class(
    tmp_path: Path,
) -> None:
    broker = make_broker(tmp_path)
    broker.register(UserCreated)
    got: list[Event] = []

    @broker.subscriber(">", name="all")
    async def on_all(event: Event) -> None:
        got.append(event)

    async with broker:
        await broker.publish("misc.thing", {"a": 1, "b": [1, 2]}, key="k", headers={"h": "v"})
        await broker.publish("user.created", {"user_id": "u9", "name": "Cy"})
        await broker.wait_idle()
    assert isinstance(got[0], GenericEvent)
    assert got[0].payload() == {"a": 1, "b": [1, 2]}
    assert (got[0].key, got[0].headers) == ("k", {"h": "v"})
    assert type(got[1]) is GenericEvent
    assert got[1].payload() == {"user_id": "u9", "name": "Cy"}


async def test_publish_many_assigns_consecutive_offsets(tmp_path: Path) -> None:
    broker = make_broker(tmp_path)
    seen: list[int] = []

    @broker.subscriber("note.added", name="notes")
    async def on_note(event: Note) -> None:
        seen.append(event.n)

    async with broker:
        results = await broker.publish_many(Note(n=i) for i in range(100))
        await broker.wait_idle()
    assert [r.offset for r in results] == list(range(100))
    assert seen == list(range(100))


async def test_handler_error_is_retried_and_tries_are_kept(tmp_path: Path) -> None:
    broker = make_broker(tmp_path)
    attempts: list[int] = []

    @broker.subscriber("note.added", name="flaky")
    async def flaky(event: Note, ctx: DeliveryContext) -> None:
        attempts.append(ctx.attempt)
        if ctx.attempt < 3:
            raise ValueError(f"boom {ctx.attempt}")
        assert ctx.previous_errors == ["ValueError('boom 1')", "ValueError('boom 2')"]

    async with broker:
        meta = await broker.publish(Note(n=1))
        await broker.wait_idle()
        chain = await broker.chain(meta.id)
        errors = await broker.store.errors(subscriber="flaky")
    assert attempts == [1, 2, 3]
    (node,) = chain.nodes.values()
    assert [(d.subscriber, d.state, d.tries) for d in node.deliveries] == [("flaky", "done", 3)]
    assert [e.attempt for e in reversed(errors)] == [1, 2]
    assert "boom 1" in errors[-1].traceback


async def test_failures_go_to_dlq_after_max_tries_with_log_lines(tmp_path: Path, caplog) -> None:
    broker = make_broker(tmp_path)
    calls = Counter()

    @broker.subscriber("note.added", name="comment")
    async def always_fails(event: Note) -> None:
        calls[event.n] += 1
        raise ValueError("bad note")

    caplog.set_level(logging.WARNING, logger="localbroker.delivery")
    async with broker:
        meta = await broker.publish(Note(n=7))
        await broker.wait_idle()
        entries = await broker.dlq.list(subscriber="comment")
        entry = await broker.dlq.show(entries[0])
    assert calls[7] == 5  # max_tries default
    assert len(entries) == 1
    assert (entry.event_id, entry.tries, entry.status) == (meta.id, 5, "dead")
    assert [a.attempt for a in entry.attempts] == [1, 2, 3, 4, 5]
    assert all("ValueError: bad note" in a.traceback for a in entry.attempts)
    lines = [r.getMessage() for r in caplog.records]
    assert (
        f"Failed 2 times, subscriber: comment, error: ValueError('bad note'), event: {meta.id} (note.added)"
        in lines
    )


async def test_ack_timeout_cancels_and_redelivers(tmp_path: Path) -> None:
    broker = make_broker(tmp_path, ack_timeout=0.2)
    attempts: list[int] = []
    cancelled = asyncio.Event()

    @broker.subscriber("note.added", name="slow")
    async def slow(event: Note, ctx: DeliveryContext) -> None:
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            try:
                await asyncio.sleep(5)
            except asyncio.CancelledError:
                cancelled.set()
                raise

    async with broker:
        await broker.publish(Note(n=1))
        await broker.wait_idle()
        (error,) = await broker.store.errors(subscriber="slow")
    assert attempts == [1, 2]
    assert cancelled.is_set()
    assert (error.kind, error.error_type) == ("timeout", "AckTimeout")


async def test_extend_renews_the_ack_timer(tmp_path: Path) -> None:
    broker = make_broker(tmp_path, ack_timeout=0.2)
    attempts: list[int] = []

    @broker.subscriber("note.added", name="long")
    async def long_work(event: Note, ctx: DeliveryContext) -> None:
        attempts.append(ctx.attempt)
        for _ in range(5):  # 0.5 s in all, more than twice the timeout
            await asyncio.sleep(0.1)
            ctx.extend()

    async with broker:
        await broker.publish(Note(n=1))
        await broker.wait_idle()
        assert await broker.store.errors(subscriber="long") == []
    assert attempts == [1]


async def test_reject_and_dont_retry_go_straight_to_dlq(tmp_path: Path) -> None:
    broker = make_broker(tmp_path)
    calls = Counter()

    @broker.subscriber("note.added", name="rejects")
    async def rejects(event: Note) -> None:
        calls["rejects"] += 1
        raise RejectEvent("not for us")

    @broker.subscriber("note.added", name="typed", dont_retry=[KeyError])
    async def typed(event: Note) -> None:
        calls["typed"] += 1
        raise KeyError("missing")

    async with broker:
        await broker.publish(Note(n=1))
        await broker.wait_idle()
        dead = await broker.dlq.list()
    assert calls == {"rejects": 1, "typed": 1}
    assert sorted((e.subscriber, e.tries) for e in dead) == [("rejects", 1), ("typed", 1)]


async def test_schema_mismatch_is_dead_lettered_not_retried(tmp_path: Path) -> None:
    broker = make_broker(tmp_path)
    calls = []

    @broker.subscriber("user.created", name="strict")
    async def strict(event: UserCreated) -> None:
        calls.append(event)

    async with broker:
        await broker.publish("user.created", {"user_id": "u1"})  # no name
        await broker.wait_idle()
        (entry,) = await broker.dlq.list(subscriber="strict")
    assert calls == []
    assert "SerializationError" in entry.error
    assert "does not fit UserCreated" in entry.error


async def test_backoff_waits_between_tries(tmp_path: Path) -> None:
    broker = make_broker(tmp_path, retry=RetryPolicy(backoff_initial=0.1, backoff_max=0.2))
    times: list[float] = []

    @broker.subscriber("note.added", name="backoff", max_tries=3)
    async def fails(event: Note) -> None:
        times.append(asyncio.get_running_loop().time())
        raise ValueError("x")

    async with broker:
        await broker.publish(Note(n=1))
        await broker.wait_idle()
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(times) == 3
    assert gaps[0] >= 0.09
    assert gaps[1] >= 0.19


async def test_same_subscriber_registered_twice_handles_once(tmp_path: Path) -> None:
    broker = make_broker(tmp_path)
    calls = Counter()

    async def handler(event: Note) -> None:
        calls[event.n] += 1

    broker.subscribe(handler, "note.added", name="once")
    broker.subscribe(handler, "note.added", name="once")
    with pytest.raises(ConfigurationError, match="already registered"):
        broker.subscribe(lambda e: None, "note.added", name="once")
    async with broker:
        for i in range(10):
            await broker.publish(Note(n=i))
        await broker.wait_idle()
    assert calls == Counter(dict.fromkeys(range(10), 1))


async def test_bad_input_gets_clear_errors(tmp_path: Path) -> None:
    broker = make_broker(tmp_path)
    async with broker:
        with pytest.raises(SerializationError, match="cannot be serialised"):
            await broker.publish("x.y", {"when": object()})
        with pytest.raises(SerializationError, match="Event or a topic"):
            await broker.publish(42)  # type: ignore[arg-type]
        with pytest.raises(SerializationError, match="envelope field names"):
            await broker.publish("x.y", {"id": "mine"})
        with pytest.raises(ConfigurationError, match="invalid topic"):
            await broker.publish("x..y", {})
        with pytest.raises(NotFoundError, match="unknown subscriber 'nobody'"):
            await broker.dlq.list(subscriber="nobody")
        with pytest.raises(NotFoundError, match="no DLQ entry 99"):
            await broker.dlq.retry(99)
        # nothing above reached the log
        assert broker.log.next_offset == 0
    with pytest.raises(ConfigurationError, match="ack_timeout"):
        Broker(tmp_path, ack_timeout=-1)
    with pytest.raises(ConfigurationError, match="at least one topic"):
        broker.subscribe(lambda e: None, name="x")
    with pytest.raises(ConfigurationError, match=r"\(event\) or \(event, context\)"):
        broker.subscribe(lambda: None, "a.b", name="y")


async def test_publish_before_start_is_refused(tmp_path: Path) -> None:
    from localbroker import BrokerStateError

    broker = make_broker(tmp_path)
    with pytest.raises(BrokerStateError, match="not running"):
        await broker.publish(Note(n=1))

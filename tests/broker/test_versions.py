"""Event versions and upcasters on the broker's own paths (live delivery, replay from the
start, DLQ retry), what a handler's annotation delivers, and conflicting classes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from localbroker import (
    Broker,
    ConfigurationError,
    Event,
    GenericEvent,
    RetryPolicy,
)
from localbroker.events import decode_envelope
from tests.versioned import (
    UserRegistered,
    UserRegisteredV1,
    UserRegisteredV2,
    add_email,
    as_tuple,
    expected_v3,
    stored_versions,
    upcasters,
)

FAST = RetryPolicy.immediate()


def make_broker(path: Path, **options: Any) -> Broker:
    options.setdefault("retry", FAST)
    options.setdefault("start_from", "earliest")
    return Broker(path, **options)


def stored(broker: Broker) -> list[tuple[str, int, dict[str, Any]]]:
    """(topic, version, data) of every record in the log, as stored."""
    out = []
    for record in broker.log.read(0, max_records=1000):
        envelope = decode_envelope(record.payload)
        out.append((envelope["topic"], envelope["version"], envelope["data"]))
    return out


async def test_live_delivery_upcasts_each_version_and_the_log_keeps_what_was_stored(
    tmp_path: Path,
) -> None:
    broker = make_broker(tmp_path)
    broker.include_router(upcasters)
    got: list[Event] = []

    @broker.subscriber("user.registered", name="welcome")
    async def welcome(event: UserRegistered) -> None:
        got.append(event)

    async with broker:
        await broker.publish_many(stored_versions())
        await broker.wait_idle()
        log = stored(broker)
    assert [as_tuple(e) for e in got] == expected_v3()
    assert [(version, sorted(data)) for _, version, data in log] == [
        (1, ["name"]),
        (2, ["email", "name"]),
        (3, ["email", "first_name", "last_name"]),
    ]


async def test_replay_from_earliest_upcasts_what_an_older_application_stored(
    tmp_path: Path,
) -> None:
    # The application of the version 1 era, then of version 2 (with its upcaster 1 -> 2).
    async with make_broker(tmp_path) as old:
        await old.publish(stored_versions()[0])
    newer = make_broker(tmp_path)
    newer.upcaster("user.registered", from_version=1)(add_email)
    async with newer:
        await newer.publish(stored_versions()[1])
    # Today's application: a new subscriber replays the whole log.
    broker = make_broker(tmp_path)
    broker.include_router(upcasters)
    got: list[Event] = []

    @broker.subscriber("user.*", name="replay", start_from="earliest")
    async def replay(event: UserRegistered) -> None:
        got.append(event)

    async with broker:
        await broker.publish(stored_versions()[2])
        await broker.wait_idle()
    assert [as_tuple(e) for e in got] == expected_v3()


async def test_dlq_retry_upcasts_with_the_upcasters_of_the_broker_that_retries(
    tmp_path: Path,
) -> None:
    """A broken upcaster dead-letters the event, naming itself; the fixed application's
    DLQ retry delivers it upcast (the stored event never changed)."""
    broken = make_broker(tmp_path, max_tries=3)
    broken.register(UserRegisteredV1, UserRegisteredV2)

    @broken.upcaster("user.registered", from_version=1)
    def no_email(data: dict[str, Any]) -> dict[str, Any]:
        raise KeyError("email")

    @broken.upcaster("user.registered", from_version=2)
    def split(data: dict[str, Any]) -> dict[str, Any]:
        return data

    calls: list[Event] = []

    @broken.subscriber("user.registered", name="welcome")
    async def welcome_broken(event: UserRegistered) -> None:
        calls.append(event)

    async with broken:
        await broken.publish(stored_versions()[0])
        await broken.wait_idle()
        (entry,) = await broken.dlq.list()
        (attempt,) = (await broken.dlq.show(entry.id)).attempts  # rejected at once, no retries
    assert calls == []
    assert "upcaster" in entry.error
    assert "no_email" in entry.error
    assert "1 -> 2" in entry.error
    assert attempt.kind == "rejected"

    fixed = make_broker(tmp_path)
    fixed.include_router(upcasters)
    got: list[Event] = []

    @fixed.subscriber("user.registered", name="welcome")
    async def welcome(event: UserRegistered) -> None:
        got.append(event)

    async with fixed:
        await fixed.dlq.retry(entry.id)
        await fixed.wait_idle()
        assert (await fixed.dlq.show(entry.id)).status == "resolved"
    assert [as_tuple(e) for e in got] == expected_v3()[:1]


async def test_an_event_newer_than_the_handlers_class_is_dead_lettered_naming_it(
    tmp_path: Path,
) -> None:
    async with make_broker(tmp_path) as newer:
        await newer.publish(stored_versions()[1])  # version 2
    old = make_broker(tmp_path)
    got: list[Event] = []

    @old.subscriber("user.registered", name="welcome")
    async def welcome(event: UserRegisteredV1) -> None:
        got.append(event)

    async with old:
        await old.wait_idle()
        (entry,) = await old.dlq.list()
    assert got == []
    assert "version 2" in entry.error
    assert "newer than the version 1" in entry.error


# -- conflicts -------------------------------------------------------------------------------


class Unrelated(Event, topic="user.registered", version=7):
    nickname: str


class SameVersion(Event, topic="user.registered"):
    login: str


async def test_two_classes_of_one_topic_without_upcasters_between_them_fail_at_start(
    tmp_path: Path,
) -> None:
    broker = make_broker(tmp_path)

    @broker.subscriber("user.registered", name="a")
    async def a(event: UserRegisteredV2) -> None: ...

    @broker.subscriber("user.registered", name="b")
    async def b(event: Unrelated) -> None: ...

    with pytest.raises(ConfigurationError, match=r"no upcaster from version 2, 3, 4, 5, 6") as err:
        await broker.start()
    assert "UserRegisteredV2 (version 2)" in str(err.value)
    assert "Unrelated (version 7)" in str(err.value)
    assert "subscriber a takes" in str(err.value)  # and a would never get version 7
    assert not (tmp_path / "log").exists()  # refused before anything was opened


async def test_a_second_class_for_the_same_version_is_refused_where_it_is_registered(
    tmp_path: Path,
) -> None:
    broker = make_broker(tmp_path)
    broker.register(UserRegisteredV1)
    with pytest.raises(ConfigurationError, match=r"two classes for version 1 of topic"):

        @broker.subscriber("user.registered", name="a")
        async def a(event: SameVersion) -> None: ...

    assert "a" not in broker.subscriptions


async def test_publishing_a_class_that_does_not_fit_is_refused_and_stores_nothing(
    tmp_path: Path,
) -> None:
    broker = make_broker(tmp_path)
    broker.include_router(upcasters)
    broker.register(UserRegisteredV1, UserRegistered)
    async with broker:
        with pytest.raises(ConfigurationError, match=r"no upcaster from version 3, 4, 5, 6"):
            await broker.publish(Unrelated(nickname="x"))
        with pytest.raises(ConfigurationError, match="two classes for version 1"):
            await broker.publish(SameVersion(login="x"))
        assert broker.log.next_offset == 0
        assert Unrelated not in broker.registry  # not kept half-registered either


async def test_two_brokers_in_one_process_have_their_own_classes(tmp_path: Path) -> None:
    """The registry is the broker's: another broker's class of the same topic is no conflict."""
    one, two = make_broker(tmp_path / "one"), make_broker(tmp_path / "two")
    one.register(SameVersion)
    two.register(UserRegisteredV1)
    async with one, two:
        await one.publish(SameVersion(login="x"))
        await two.publish(UserRegisteredV1(name="y"))


# -- what a handler's annotation delivers ----------------------------------------------------


class UserDeleted(Event, topic="user.deleted"):
    user_id: str


async def test_typed_handler_on_a_pattern_receives_only_its_topic(tmp_path: Path) -> None:
    """The README's own pattern: a handler typed UserRegistered on user.* is not handed
    user.deleted (which used to dead-letter every other user.* event)."""
    broker = make_broker(tmp_path)
    broker.include_router(upcasters)
    typed: list[Event] = []
    union: list[Event] = []
    untyped: list[Event] = []

    @broker.subscriber("user.*", name="typed")
    async def on_registered(event: UserRegistered) -> None:
        typed.append(event)

    @broker.subscriber("user.*", name="union")
    async def on_either(event: UserRegistered | UserDeleted) -> None:
        union.append(event)

    @broker.subscriber("user.*", name="untyped")
    async def on_any(event):  # type: ignore[no-untyped-def]
        untyped.append(event)

    async with broker:
        await broker.publish(UserRegisteredV1(name="Ann Lee"))
        await broker.publish(UserDeleted(user_id="u1"))
        await broker.publish("user.logged_in", {"user_id": "u1"})
        await broker.wait_idle()
        assert await broker.dlq.list() == []
        assert broker.subscriptions["typed"].patterns == ("user.registered",)
    assert [type(e) for e in typed] == [UserRegistered]
    assert [type(e) for e in union] == [UserRegistered, UserDeleted]
    assert [type(e) for e in untyped] == [GenericEvent] * 3
    # Untyped handlers get the newest version the broker knows, as a GenericEvent.
    assert untyped[0].version == 3
    assert untyped[0].payload() == {
        "first_name": "Ann",
        "last_name": "Lee",
        "email": "ann.lee@example.invalid",
    }


def test_a_class_the_patterns_never_deliver_is_refused(tmp_path: Path) -> None:
    broker = make_broker(tmp_path)
    with pytest.raises(ConfigurationError, match=r"UserDeleted \(topic 'user.deleted'\)"):

        @broker.subscriber("order.*", name="orders")
        async def on_order(event: UserRegistered | UserDeleted) -> None: ...


def test_an_exact_topic_the_handlers_classes_do_not_have_is_refused(tmp_path: Path) -> None:
    broker = make_broker(tmp_path)
    with pytest.raises(ConfigurationError, match=r"subscribed to user.deleted but takes only"):

        @broker.subscriber("user.registered", "user.deleted", name="users")
        async def on_user(event: UserRegistered) -> None: ...


def test_an_annotation_that_cannot_be_resolved_is_refused(tmp_path: Path) -> None:
    class Local(Event, topic="local.thing"):
        n: int

    async def handler(event: Local) -> None: ...  # a string: `from __future__ import annotations`

    with pytest.raises(ConfigurationError, match=r"cannot resolve the annotation 'Local'"):
        make_broker(tmp_path).subscribe(handler, "local.thing", name="local")


async def test_untyped_publish_is_stored_at_the_newest_version_the_broker_knows(
    tmp_path: Path,
) -> None:
    broker = make_broker(tmp_path)
    broker.include_router(upcasters)
    broker.register(UserRegistered)
    async with broker:
        await broker.publish(
            "user.registered", {"first_name": "Di", "last_name": "Ox", "email": "d@x"}
        )
        await broker.publish("other.thing", {"n": 1})
        versions = [version for _, version, _ in stored(broker)]
    assert versions == [3, 1]


async def test_a_new_version_without_an_upcaster_for_the_stored_ones_is_named_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The issue's case: version 1 events in the log, an application with only version 2.
    Start warns (the schema registry recorded version 1 as published); the handler's DLQ
    entry names the missing upcaster; once it is added, a DLQ retry delivers the event."""
    async with make_broker(tmp_path) as old:
        await old.publish(stored_versions()[0])
    broker = make_broker(tmp_path)

    @broker.subscriber("user.registered", name="welcome")
    async def welcome(event: UserRegisteredV2) -> None: ...

    with caplog.at_level("WARNING", logger="localbroker.schemas"):
        async with broker:
            await broker.wait_idle()
            (entry,) = await broker.dlq.list()
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "localbroker.schemas"]
    assert (
        "topic 'user.registered': events of version 1 cannot reach version 2 "
        "(tests.versioned.UserRegisteredV2): no upcaster from version 1"
    ) in warning
    assert "no upcaster of 'user.registered' from version 1" in entry.error

    fixed = make_broker(tmp_path)
    fixed.upcaster("user.registered", from_version=1)(add_email)
    got: list[Event] = []

    @fixed.subscriber("user.registered", name="welcome")
    async def welcome_fixed(event: UserRegisteredV2) -> None:
        got.append(event)

    async with fixed:
        await fixed.dlq.retry(entry.id)
        await fixed.wait_idle()
    assert [(e.name, e.email) for e in got] == [("Ann Lee", "ann.lee@example.invalid")]  # type: ignore[attr-defined]

"""Routers: one module's handlers, classes and upcasters, included by any number of brokers."""

from __future__ import annotations

from pathlib import Path

import pytest

from localbroker import Broker, ConfigurationError, Event, RetryPolicy, Router
from localbroker.events import decode_envelope
from tests.broker import users_module
from tests.versioned import UserRegistered, UserRegisteredV1, UserRegisteredV2, add_email


def envelopes(broker: Broker) -> list[dict]:
    return [decode_envelope(r.payload) for r in broker.log.read(0, max_records=100)]


async def test_two_brokers_in_one_process_include_the_same_router_module(tmp_path: Path) -> None:
    brokers = [
        Broker(tmp_path / name, start_from="earliest", retry=RetryPolicy.immediate())
        for name in ("app", "test")
    ]
    for broker in brokers:
        broker.include_router(users_module.router)
    async with brokers[0] as app, brokers[1] as test:
        await app.publish(UserRegisteredV1(name="Ann Lee"))
        await test.publish(UserRegistered(first_name="Bo", last_name="Ek", email="bo@x.example"))
        await app.wait_idle()
        await test.wait_idle()
        logs = {"app": envelopes(app), "test": envelopes(test)}
        for broker in (app, test):
            assert await broker.dlq.list() == []
            assert sorted(broker.subscriptions) == ["audit", "welcome"]
    # Each broker's handler published into its own log, in the chain of the event it handled.
    for name, to in (("app", "ann.lee@example.invalid"), ("test", "bo@x.example")):
        registered, sent = logs[name]
        assert (registered["topic"], sent["topic"]) == ("user.registered", "mail.welcome_sent")
        assert sent["data"] == {"to": to}
        assert sent["causation_id"] == registered["id"]
        assert sent["correlation_id"] == registered["correlation_id"]


def test_a_routers_mistakes_are_raised_where_they_are_declared() -> None:
    router = Router()
    with pytest.raises(ConfigurationError, match="never delivers it"):

        @router.subscriber("order.*")
        async def wrong_topic(event: UserRegistered) -> None: ...

    router.upcaster("user.registered", from_version=1)(add_email)
    router.upcaster("user.registered", from_version=1)(add_email)  # the same again: nothing
    with pytest.raises(ConfigurationError, match=r"two upcasters of 'user\.registered'"):
        router.upcaster("user.registered", from_version=1)(lambda data: data)
    assert router.handlers == []


async def test_including_a_router_whose_classes_do_not_fit_changes_nothing(
    tmp_path: Path,
) -> None:
    class Clash(Event, topic="user.registered", version=3):
        login: str

    broker = Broker(tmp_path)
    broker.register(Clash)
    before = broker.registry.classes("user.registered")
    with pytest.raises(ConfigurationError, match="two classes for version 3"):
        broker.include_router(users_module.router)
    assert broker.registry.classes("user.registered") == before
    assert broker.registry.upcasters("user.registered") == {}
    assert broker.subscriptions == {}


async def test_versions_reached_through_a_router_pass_the_start_check(tmp_path: Path) -> None:
    router = Router()
    router.register(UserRegisteredV1, UserRegisteredV2)  # no upcaster: refused at start
    broker = Broker(tmp_path)
    broker.include_router(router)
    with pytest.raises(ConfigurationError, match="no upcaster from version 1"):
        await broker.start()
    fixed = Broker(tmp_path)
    fixed.include_router(router)
    fixed.upcaster("user.registered", from_version=1)(add_email)
    async with fixed:
        pass

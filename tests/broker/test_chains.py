"""Event chains: correlation and causation ids filled in through handlers, and the chain query."""

from __future__ import annotations

from pathlib import Path

import pytest

from localbroker import BrokerStateError, NotFoundError, chain_scope
from tests.broker.events import CreateUser, UserCreated, UserRenamed
from tests.broker.test_delivery import make_broker


async def test_chain_of_a_command_is_a_tree_with_delivery_states(tmp_path: Path) -> None:
    broker = make_broker(tmp_path)

    @broker.subscriber("user.create", name="users")
    async def create(cmd: CreateUser) -> None:
        await broker.publish(UserCreated(user_id="u1", name=cmd.name))

    @broker.subscriber("user.created", name="profile")
    async def rename(event: UserCreated) -> None:
        await broker.publish(UserRenamed(user_id=event.user_id, name=event.name.upper()))

    @broker.subscriber("user.renamed", name="blog")
    async def blog(event: UserRenamed) -> None:
        pass

    @broker.subscriber("user.renamed", name="comment", max_tries=2)
    async def comment(event: UserRenamed) -> None:
        raise ValueError("comment store down")

    async with broker:
        cmd = await broker.publish(CreateUser(name="ann"))
        unrelated = await broker.publish(UserCreated(user_id="u2", name="Bo"))
        await broker.wait_idle()
        chain = await broker.chain(cmd.id)

    assert cmd.correlation_id == cmd.id
    walk = [(depth, node.event.topic) for depth, node in chain.walk()]
    assert walk == [(0, "user.create"), (1, "user.created"), (2, "user.renamed")]
    ids = {node.event.id for _, node in chain.walk()}
    assert unrelated.id not in ids
    created = chain.roots[0].children[0]
    assert created.event.causation_id == cmd.id
    assert created.event.correlation_id == cmd.id
    renamed = created.children[0]
    assert {d.subscriber: d.state for d in renamed.deliveries} == {"blog": "done", "comment": "dlq"}
    assert renamed.state == "dlq"
    text = chain.render()
    assert "comment: dlq, tries 2" in text
    assert "ValueError('comment store down')" in text


async def test_chain_scope_for_a_command_that_is_not_published(tmp_path: Path) -> None:
    async with make_broker(tmp_path) as broker:
        with chain_scope("req-42"):
            a = await broker.publish(UserCreated(user_id="u1", name="A"))
        b = await broker.publish(UserCreated(user_id="u2", name="B"))
        chain = await broker.chain("req-42")
        with pytest.raises(NotFoundError, match="req-42x"):
            await broker.chain("req-42x")
    assert [n.event.id for n in chain.roots] == [a.id]
    assert a.correlation_id == "req-42"
    assert b.correlation_id == b.id


async def test_chain_sees_events_the_index_has_not_caught_up_with(tmp_path: Path) -> None:
    async with make_broker(tmp_path, index_events=False) as broker:
        cmd = await broker.publish(CreateUser(name="x"))
        with chain_scope(cmd.id, cmd.id):
            await broker.publish(UserCreated(user_id="u", name="x"))
        chain = await broker.chain(cmd.id)
    assert [(d, n.event.topic) for d, n in chain.walk()] == [
        (0, "user.create"),
        (1, "user.created"),
    ]


async def test_a_plain_def_handler_publishes_into_its_chain(tmp_path: Path) -> None:
    broker = make_broker(tmp_path)
    seen: list[UserRenamed] = []

    @broker.subscriber("user.created", name="sync-renamer")
    def rename(event: UserCreated) -> None:  # runs in a thread
        broker.publish_sync(UserRenamed(user_id=event.user_id, name="X"))

    @broker.subscriber("user.renamed", name="collector")
    async def collect(event: UserRenamed) -> None:
        seen.append(event)

    async with broker:
        created = await broker.publish(UserCreated(user_id="u1", name="A"))
        await broker.wait_idle()
        with pytest.raises(BrokerStateError, match="on the event loop"):
            broker.publish_sync(UserRenamed(user_id="u1", name="Y"))
    (renamed,) = seen
    assert renamed.causation_id == created.id
    assert renamed.correlation_id == created.correlation_id

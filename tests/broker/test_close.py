"""``close()`` is bounded: the event index may be left behind, and catches up at the next start.

Issue 9, item 10 (close took 18.9 s after 1M events: the indexer caught up inside it).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from localbroker import Broker
from tests.broker.events import Note
from tests.state.index_files import indexed_to
from tests.waiting import wait_until

EVENTS = 50_000


async def test_close_leaves_a_far_behind_index_to_the_next_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    # A log of many events and no index: the next broker's indexer starts from nothing.
    async with Broker(data, fsync="never", index_events=False) as broker:
        for start in range(0, EVENTS, 10_000):
            await broker.publish_many(Note(n=i) for i in range(start, start + 10_000))

    caplog.set_level(logging.WARNING, logger="localbroker")
    broker = Broker(data, index_close_timeout=0.05)
    async with broker:
        pass
    # Close stops at the first batch (5000 records) after 0.05 s: the indexer, which had
    # barely started, cannot have indexed the 50k events, and close did not wait for it.
    behind = indexed_to(data)
    assert behind < EVENTS
    warning = next(r.getMessage() for r in caplog.records if "index.db) behind" in r.getMessage())
    assert f"offsets {behind}..{EVENTS - 1} are indexed at the next start" in warning

    async with Broker(data) as broker:
        await wait_until(lambda: indexed_to(data) == EVENTS, what="the index to catch up")
        first = await broker.publish(Note(n=-1))
        chain = await broker.chain(first.id)
        assert [node.event.offset for _, node in chain.walk()] == [EVENTS]

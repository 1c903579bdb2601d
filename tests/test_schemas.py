"""The schema recorder keeps state.db up to date, even when a save is cut short."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from localbroker import EventRegistry
from localbroker.broker.context import ChainScope
from localbroker.schemas import SchemaRecorder, load
from localbroker.state.store import StateStore
from tests.versioned import UserRegistered


async def test_a_save_cancelled_half_way_is_made_by_the_next_one(tmp_path: Path) -> None:
    """close() cancels the flush task, possibly in the middle of a save: the final flush
    must still record what the cancelled save did not."""
    store = await StateStore.open(tmp_path / "state.db", create=True)
    try:
        registry = EventRegistry()
        registry.register(UserRegistered)
        recorder = SchemaRecorder(registry, {})
        await recorder.record(store)
        recorder.note(UserRegistered(first_name="A", last_name="B", email="c"), None)
        recorder.note(
            UserRegistered(first_name="A", last_name="B", email="c"), ChainScope("x", "y", "mail")
        )
        saving = asyncio.create_task(recorder.save_if_changed(store))
        await asyncio.sleep(0)  # the save has begun: it waits for SQLite
        saving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await saving
        await recorder.save_if_changed(store)
        recorded = await load(store)
    finally:
        await store.close()
    entry = recorded["user.registered"]
    assert entry.publishers == ["(outside handlers)", "mail"]
    assert entry.published == [3]

"""Offsets handed out before: what the broker's readers recorded outside the log.

At start the broker compares these with the end of the log. A position beyond the end means
records that were handed out (delivered, mirrored, archived, indexed) are missing from the
log: a crash lost them (with ``fsync`` other than ``always``) or the log was replaced by an
older copy. Their offsets must never be handed out again, or those readers would skip the new
events that got them (see docs/log-format.md, "Gaps").
"""

from __future__ import annotations

import logging

from localbroker.errors import StateStoreError
from localbroker.state.event_index import EventIndex
from localbroker.state.store import StateStore

__all__ = ["ARCHIVE_STATE_KEY", "SYNC_STATE_PREFIX", "handed_out"]

logger = logging.getLogger("localbroker")

#: Key prefix of each sync target's state (``{"cursor": next offset to send, ...}``); the
#: same as ``localbroker.sync``'s ``STATE_PREFIX``.
SYNC_STATE_PREFIX = "sync.state."
#: Key of the archive's state (``{"archived_until": next offset after the archive, ...}``);
#: the same as ``localbroker.archive``'s ``STATE_KEY``.
ARCHIVE_STATE_KEY = "archive"


async def handed_out(store: StateStore, index: EventIndex | None) -> dict[str, int]:
    """The next offset each reader of the log recorded, by a name for messages."""
    found: dict[str, int] = {}
    try:
        found.update((f"subscriber {s.name!r}", s.position) for s in await store.subscribers())
    except StateStoreError as exc:
        # A damaged row stops the start of its own subscriber, with its own message.
        logger.warning("subscriber positions not compared with the end of the log: %s", exc)
    for key, state in (await store.values(SYNC_STATE_PREFIX)).items():
        if isinstance(state, dict) and isinstance(state.get("cursor"), int):
            found[f"sync target {key[len(SYNC_STATE_PREFIX) :]!r}"] = state["cursor"]
    archive = await store.get_value(ARCHIVE_STATE_KEY)
    if isinstance(archive, dict) and isinstance(archive.get("archived_until"), int):
        found["the archive"] = archive["archived_until"]
    if index is not None:
        found["the event index (index.db)"] = await index.next_offset()
    return found

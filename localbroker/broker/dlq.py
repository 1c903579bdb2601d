"""The dead letter queue of a running broker."""

from __future__ import annotations

import builtins
import logging
from collections.abc import Callable
from typing import Any

from localbroker.errors import NotFoundError
from localbroker.state.store import DLQEntry, StateStore

__all__ = ["DeadLetterQueue"]

logger = logging.getLogger("localbroker.dlq")


class DeadLetterQueue:
    """Events that ran out of tries, per subscriber, with every try's error and traceback.

    Example::

        for entry in await broker.dlq.list(subscriber="comment"):
            print(entry.id, entry.topic, entry.error)
        await broker.dlq.retry(entry)       # to the "comment" subscriber only
    """

    def __init__(self, store: Callable[[], StateStore], on_retry: Callable[[str], bool]) -> None:
        # ``store`` is looked up on each call: the broker opens its store only when started.
        # ``on_retry(subscriber)`` wakes that subscriber if it runs here; False if it does not.
        self._store = store
        self._on_retry = on_retry

    async def list(
        self, *, subscriber: str | None = None, topic: str | None = None, limit: int = 1000
    ) -> builtins.list[DLQEntry]:
        """Entries still dead (not retried or discarded), oldest first."""
        store = self._store()
        if subscriber is not None:
            await store.require_subscriber(subscriber)
        return await store.dlq_entries(subscriber=subscriber, topic=topic, limit=limit)

    async def show(self, entry: DLQEntry | int) -> DLQEntry:
        """One entry with every attempt (error, traceback, time)."""
        return await self._store().dlq_entry(_id(entry))

    async def retry(self, entry: DLQEntry | int) -> DLQEntry:
        """Send the event back to the subscriber that failed it, and to no other.

        It gets ``max_tries`` fresh tries; if they fail too, it returns to the DLQ.
        """
        updated = await self._store().set_dlq_status(_id(entry), "retrying")
        if not self._on_retry(updated.subscriber):
            logger.info(
                "DLQ entry %d queued for subscriber %r, which is not running in this process",
                updated.id,
                updated.subscriber,
            )
        return updated

    async def retry_all(
        self, *, subscriber: str | None = None, topic: str | None = None
    ) -> builtins.list[DLQEntry]:
        """Retry every dead entry matching the filters."""
        return [await self.retry(e) for e in await self.list(subscriber=subscriber, topic=topic)]

    async def discard(self, entry: DLQEntry | int) -> DLQEntry:
        """Give up on the event for that subscriber (kept in the DLQ table as discarded)."""
        return await self._store().set_dlq_status(_id(entry), "discarded")

    async def execute_requests(self) -> None:
        """Carry out DLQ actions queued by the CLI or the dashboard of another process."""
        store = self._store()
        for request_id, action, args in await store.pending_requests():
            try:
                # The action and the request's answer are one change: after a crash the
                # request is either still pending or done, never done twice.
                async with store.transaction(f"carry out request {request_id} ({action})"):
                    result = await self.perform(action, args)
                    await store.finish_request(request_id, ok=True, result=result)
            except Exception as exc:
                logger.warning("request %d (%s %s) failed: %s", request_id, action, args, exc)
                await store.finish_request(request_id, ok=False, result=str(exc))

    async def perform(self, action: str, args: dict[str, Any]) -> builtins.list[int]:
        """Run a queued action; returns the ids of the entries it touched."""
        if action == "dlq.retry":
            return [(await self.retry(int(args["id"]))).id]
        if action == "dlq.discard":
            return [(await self.discard(int(args["id"]))).id]
        if action in ("dlq.retry_ids", "dlq.discard_ids"):
            # Exactly the entries an operator confirmed (the dashboard's bulk buttons): all
            # of them or, if one is not dead any more, none (the caller runs this in one
            # transaction).
            act = self.retry if action == "dlq.retry_ids" else self.discard
            return [(await act(int(i))).id for i in args["ids"]]
        if action == "dlq.retry_all":
            entries = await self.retry_all(
                subscriber=args.get("subscriber"), topic=args.get("topic")
            )
            return [e.id for e in entries]
        if action == "dlq.discard_all":
            entries = await self.list(subscriber=args.get("subscriber"), topic=args.get("topic"))
            return [(await self.discard(e)).id for e in entries]
        raise NotFoundError(f"unknown action {action!r}")


def _id(entry: DLQEntry | int) -> int:
    return entry.id if isinstance(entry, DLQEntry) else int(entry)

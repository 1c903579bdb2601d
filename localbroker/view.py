"""A read-only view of a data directory, for tools running beside the broker (CLI, dashboard).

It reads the log, ``state.db`` and ``index.db`` while the broker writes them, and sends
actions (DLQ retry/discard) to the broker that runs on the directory, or carries them out
itself when none runs. An action is never carried out by both.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import TracebackType
from typing import Any

import filelock
import watchfiles

from localbroker.alerts.extension import STATE_PREFIX as ALERTS_PREFIX
from localbroker.broker.broker import SYNC_STATUS_PREFIX
from localbroker.broker.chains import Chain, build_chain
from localbroker.broker.dlq import DeadLetterQueue
from localbroker.broker.health import Health, Stall, SubscriberHealth
from localbroker.broker.subscriber import histogram_quantile
from localbroker.errors import BrokerStateError, CorruptLogError, NotFoundError
from localbroker.events import decode_envelope
from localbroker.log import CommitLog, Record
from localbroker.log.gaps import reserved_end
from localbroker.state.coordination import read_processes
from localbroker.state.event_index import EventIndex
from localbroker.state.store import StateStore, SubscriberState
from localbroker.topics import TopicPattern

__all__ = ["BrokerView", "SubscriberInfo"]

ALIVE_SECONDS = 5.0


@dataclasses.dataclass(frozen=True, slots=True)
class SubscriberInfo:
    """A subscriber's queue as seen from outside."""

    name: str
    patterns: list[str]
    committed: int
    position: int
    lag: int
    """Offsets in the log past the committed one (events of other topics included)."""
    in_flight: int
    processed: int
    failures: int
    dlq: int
    handler_p50: float | None
    handler_p99: float | None
    running: bool
    """Whether a broker process flushed this subscriber in the last few seconds."""
    pid: int | None
    stalled: str | None = None
    """Why it cannot read on (the read at its position fails: damage in the log), or None."""


class BrokerView:
    """Read-only access to a data directory, usable while a broker runs on it.

    Example::

        async with BrokerView("./data") as view:
            for sub in await view.subscribers():
                print(sub.name, sub.lag)
    """

    def __init__(self, data_dir: str | Path) -> None:
        self.data_dir = Path(data_dir)
        self.log = CommitLog(self.data_dir / "log", readonly=True)
        self._store: StateStore | None = None
        self._index: EventIndex | None = None

    async def __aenter__(self) -> BrokerView:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def open(self) -> None:
        if not (self.data_dir / "log").is_dir():
            raise NotFoundError(
                f"{self.data_dir} holds no localbroker log (no {self.data_dir / 'log'})"
            )
        await asyncio.to_thread(self.log.open)
        self._store = await StateStore.open(self.data_dir / "state.db", readonly=True)
        if (self.data_dir / "index.db").exists():
            # One of another format (the broker rebuilds it at its next start): read the log.
            with contextlib.suppress(NotFoundError):
                self._index = await EventIndex.open(self.data_dir / "index.db", readonly=True)

    async def close(self) -> None:
        if self._store is not None:
            await self._store.close()
        if self._index is not None:
            await self._index.close()
        await asyncio.to_thread(self.log.close)

    @property
    def store(self) -> StateStore:
        if self._store is None:
            raise BrokerStateError("BrokerView is not open")
        return self._store

    @property
    def index(self) -> EventIndex | None:
        return self._index

    def broker_running(self) -> bool:
        """Whether a broker process holds the directory's writer lock."""
        lock = filelock.FileLock(self.data_dir / "log" / "writer.lock")
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            return True
        lock.release()
        return False

    async def refresh(self) -> None:
        """See what the broker appended since the last look."""
        await asyncio.to_thread(self.log.refresh)

    # -- queries ---------------------------------------------------------------------------

    async def subscribers(self) -> list[SubscriberInfo]:
        await self.refresh()
        dlq = await self.store.dlq_counts()
        now = time.time()
        return [self._info(s, dlq.get(s.name, 0), now) for s in await self.store.subscribers()]

    async def subscriber(self, name: str) -> SubscriberInfo:
        await self.refresh()
        state = await self.store.require_subscriber(name)
        dlq = await self.store.dlq_counts()
        return self._info(state, dlq.get(name, 0), time.time())

    def _info(self, s: SubscriberState, dlq: int, now: float) -> SubscriberInfo:
        return SubscriberInfo(
            name=s.name,
            patterns=s.patterns,
            committed=s.committed,
            position=s.position,
            lag=max(0, self.log.next_offset - s.committed),
            in_flight=max(0, s.position - s.committed - len(s.done)),
            processed=s.processed,
            failures=s.failures,
            dlq=dlq,
            handler_p50=histogram_quantile(s.handler_hist, 0.5),
            handler_p99=histogram_quantile(s.handler_hist, 0.99),
            running=s.heartbeat is not None and now - s.heartbeat < ALIVE_SECONDS,
            pid=s.pid,
            stalled=self._stall(s.position),
        )

    def _stall(self, position: int) -> str | None:
        """Why a reader at ``position`` cannot read on, found by reading there."""
        log = self.log
        if position < log.next_offset:
            try:
                log.read(position, max_records=1)
            except CorruptLogError as exc:
                return str(exc)
            except NotFoundError:
                return None  # deleted by retention: served by the archive, if any
        elif log.damage is not None:
            # The readable log ends at the damage: a reader there is held up by it.
            return str(log.damage) if position == log.next_offset else None
        elif position > max(log.next_offset, reserved_end(log.gaps)):
            return (
                f"its position {position} is beyond the end of the log ({log.next_offset}): "
                "the records it read are not in the log any more; the broker records these "
                "offsets as lost when it starts (see docs/log-format.md, 'Gaps')"
            )
        return None

    async def health(self) -> Health:
        """The same as ``Broker.health()``, worked out from the files.

        A subscriber is stalled when the read at its position fails; a sync target when its
        running broker last saved it as stalled.
        """
        subscribers = await self.subscribers()
        return Health.of(
            (
                SubscriberHealth.of(
                    s.name,
                    s.position,
                    s.lag,
                    Stall(s.position, s.stalled) if s.stalled is not None else None,
                )
                for s in subscribers
            ),
            self.log.gaps,
            {  # as the running broker's sync targets last saved it
                f"sync target {name}": Stall(**status["stalled"])
                for name, status in (await self.sync_status()).items()
                if status.get("running") and status.get("stalled")
            },
            await read_processes(self.store),
        )

    async def sync_status(self) -> dict[str, dict[str, Any]]:
        """The status each sync target last persisted, by name (see ``Broker.sync_status``).

        Each status has ``updated`` (seconds since the epoch): an old one means no broker
        runs the target now.
        """
        prefix = SYNC_STATUS_PREFIX
        return {k[len(prefix) :]: v for k, v in (await self.store.values(prefix)).items()}

    async def alerts(self) -> dict[str, dict[str, Any]]:
        """The state each webhook notifier last saved, by name (see ``Alerts.state``): what
        is active, the recent alerts, deliveries; ``updated`` says when."""
        prefix = ALERTS_PREFIX
        return {k[len(prefix) :]: v for k, v in (await self.store.values(prefix)).items()}

    async def chain(self, correlation_id: str) -> Chain:
        await self.refresh()
        return await build_chain(correlation_id, store=self.store, index=self._index, log=self.log)

    def read(self, offset: int, max_records: int = 1000) -> list[Record]:
        return self.log.read(offset, max_records=max_records)

    async def tail(
        self,
        pattern: str = ">",
        *,
        start: int | None = None,
        follow: bool = False,
        stop: asyncio.Event | None = None,
    ) -> AsyncIterator[tuple[int, dict[str, Any]]]:
        """``(offset, envelope)`` of events matching ``pattern`` from ``start`` (default: the end).

        With ``follow`` it keeps waiting for new appends (noticed with watchfiles, not polling)
        until ``stop`` is set. Damage in the log ends it with :class:`CorruptLogError` (naming
        the bad record's file, byte and offset), after every good record before it.
        """
        matcher = TopicPattern(pattern)
        await self.refresh()
        offset = self.log.next_offset if start is None else max(start, self.log.start_offset)
        while True:
            while offset < self.log.next_offset:
                # A bad record raises CorruptLogError here, after the records before it.
                for record in self.log.read(offset, max_records=1000):
                    offset = record.offset + 1
                    envelope = decode_envelope(record.payload)
                    if matcher.matches(envelope["topic"]):
                        yield record.offset, envelope
            if self.log.damage is not None:
                raise self.log.damage  # the readable log ends there
            if not follow or (stop is not None and stop.is_set()):
                return
            async for _ in watchfiles.awatch(
                self.data_dir / "log",
                stop_event=stop,
                debounce=50,
                step=20,
                rust_timeout=1000,
                yield_on_timeout=True,
            ):
                break
            await self.refresh()

    # -- actions ---------------------------------------------------------------------------

    async def dlq_action(
        self, action: str, args: dict[str, Any], *, timeout: float = 10.0
    ) -> list[int]:
        """Carry out a DLQ action (``dlq.retry``, ``dlq.discard``, ``dlq.retry_all``, ...).

        With a broker running on the directory, the action is queued for it and this waits for
        its answer; otherwise this process takes the writer lock and carries it out itself.
        """
        lock = filelock.FileLock(self.data_dir / "log" / "writer.lock")
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            return await self._via_broker(action, args, timeout)
        try:
            store = await StateStore.open(self.data_dir / "state.db")
            try:
                async with store.transaction(f"carry out {action}"):  # all entries or none
                    return await DeadLetterQueue(lambda: store, lambda _name: False).perform(
                        action, args
                    )
            finally:
                await store.close()
        finally:
            lock.release()

    async def _via_broker(self, action: str, args: dict[str, Any], timeout: float) -> list[int]:
        store = await StateStore.open(self.data_dir / "state.db")
        try:
            request_id = await store.add_request(action, args)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                status, result = await store.request_result(request_id)
                if status == "done":
                    return list(result)
                if status == "failed":
                    raise BrokerStateError(f"the running broker refused {action}: {result}")
                await asyncio.sleep(0.05)
            raise BrokerStateError(
                f"the running broker did not carry out {action} within {timeout}s "
                f"(request {request_id} stays queued)"
            )
        finally:
            await store.close()

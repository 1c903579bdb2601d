"""What every sync target shares: lifecycle, the outbound cursor, outage handling, status.

A target follows the local log from a durable cursor and sends batches of records to its
server with :meth:`SyncTarget.send`, which must be idempotent (a batch may be sent again after
a crash or an outage). The cursor moves only once the server confirmed a batch; it is saved in
the state store (``state.db``, key/value table) every ``status_interval``, so after a crash the
last few batches are sent again and the server's idempotency drops them.
"""

from __future__ import annotations

import abc
import asyncio
import collections
import contextlib
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Collection
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar
from urllib.parse import urlsplit, urlunsplit

from localbroker.broker.broker import SYNC_STATUS_PREFIX
from localbroker.broker.health import Stall
from localbroker.config import StartFrom
from localbroker.errors import (
    BrokerStateError,
    CorruptLogError,
    LocalBrokerError,
    NotFoundError,
    SerializationError,
    SyncError,
)
from localbroker.events import decode_envelope
from localbroker.log import Record
from localbroker.log.recovery import REPAIR_HINT

from .config import TargetConfig
from .errors import SyncConfigurationError, TargetUnavailableError
from .inbound import origin_of

if TYPE_CHECKING:
    from localbroker import Broker

__all__ = ["PRODUCER_KEY", "SERVICE_ENV", "Health", "SyncTarget", "choose_service", "redact"]

logger = logging.getLogger("localbroker.sync")

#: Key of the data directory's producer id (a UUID made once): it names this log in the targets.
PRODUCER_KEY = "sync.producer"
STATE_PREFIX = "sync.state."
#: The service name of the whole process, for every target without a ``service`` of its own.
SERVICE_ENV = "LOCALBROKER_SERVICE"
#: Longest wait between two reads of a log the mirror cannot read (damage): it goes on by
#: itself once the read succeeds, without a hot loop meanwhile.
STALLED_RETRY_MAX = 5.0

C = TypeVar("C", bound=TargetConfig)


def choose_service(target: SyncTarget[Any], broker: Broker) -> tuple[str, str]:
    """The service name of ``target`` on ``broker``, and where it comes from.

    Precedence: the target's own ``service`` (keyword, or ``LOCALBROKER_REDIS_SERVICE`` /
    ``LOCALBROKER_MONGO_SERVICE`` / ``LOCALBROKER_POSTGRES_SERVICE``); then ``LOCALBROKER_SERVICE``; then the ``service`` given
    to the broker's other sync targets (a Redis target's ``service="billing"`` names the Mongo
    documents too); then the data directory's name. Other targets naming different services
    leave it ambiguous: :class:`SyncConfigurationError`.
    """
    if target.config.service:
        return target.config.service, "its own service option"
    process_wide = os.environ.get(SERVICE_ENV)
    if process_wide:
        return process_wide, SERVICE_ENV
    named = {
        other.name: other.config.service
        for other in broker.extensions
        if isinstance(other, SyncTarget) and other is not target and other.config.service
    }
    if len(set(named.values())) > 1:
        listed = ", ".join(f"{name}: {service!r}" for name, service in sorted(named.items()))
        raise SyncConfigurationError(
            f"{target.name} sync: no service given, and the other sync targets name different "
            f"ones ({listed}); give {target.name} its own service= (or set {SERVICE_ENV})"
        )
    if named:
        name, service = next(iter(named.items()))
        return service, f"the service option of the {name} target"
    return broker.data_dir.resolve().name, "the data directory's name"


def redact(url: str) -> str:
    """``url`` without its password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else "***@"
    return urlunsplit(parts._replace(netloc=user + netloc))


class Health:
    """Connection state of one target, shared by its loops: one warning per outage, not per event."""

    def __init__(self, target: SyncTarget[Any]) -> None:
        self.target = target
        self.connected = False
        self.failures = 0
        self.down_since: float | None = None
        self.last_error: str | None = None
        self.last_error_at: float | None = None

    def ok(self) -> None:
        if self.down_since is not None:
            logger.warning(
                "%s: %s is reachable again after %.1f s; sending from offset %d",
                self.target.name,
                self.target.describe(),
                time.monotonic() - self.down_since,
                self.target.cursor,
            )
        self.connected = True
        self.failures = 0
        self.down_since = None

    def failed(self, exc: BaseException) -> float:
        """Record a failure; return the seconds to wait before the next attempt."""
        self.last_error = f"{type(exc).__name__}: {exc}"
        self.last_error_at = time.time()
        retriable = getattr(exc, "retriable", True)
        if self.down_since is None:
            self.down_since = time.monotonic()
            logger.log(
                logging.WARNING if retriable else logging.ERROR,
                "%s: %s failed (%s); the broker goes on, events stay in the local log "
                "from offset %d and are sent when it works again (retrying with backoff)",
                self.target.name,
                self.target.describe(),
                self.last_error,
                self.target.cursor,
            )
        self.connected = False
        self.failures += 1
        return float(self.target.config.reconnect.delay(self.failures))


class SyncTarget(abc.ABC, Generic[C]):
    """Base of the sync targets: a broker extension that mirrors the log to a server.

    Subclasses implement :meth:`connect` (check the configuration, raise
    :class:`SyncConfigurationError` for what retrying cannot fix), :meth:`send` (idempotent),
    and may add loops with :meth:`spawn`.
    """

    kind: ClassVar[str]
    #: Start of the ``origin`` header of the events this kind of target appends from its
    #: server (``redis:``, ``nats:``): :meth:`outgoing` never sends those back. None: no
    #: inbound side.
    origin_prefix: ClassVar[str | None] = None

    def __init__(self, config: C) -> None:
        self.config = config
        self.name = config.name or self.kind
        self.health = Health(self)
        self.cursor = 0
        """Next log offset to send: everything before it is confirmed by the server."""
        self.sent = 0
        self.service = config.service or ""
        """Name of this application in the server (set by :meth:`start`, see choose_service)."""
        self.producer = ""
        self._broker: Broker | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._rate: collections.deque[tuple[float, int]] = collections.deque(maxlen=10)
        self._resume = True
        self._cursor_moved = asyncio.Event()
        self.closing = False
        """Set by :meth:`close`: loops stop at their next turn."""
        self.stall: Stall | None = None
        """Why the mirror cannot read the log at its cursor (damage), None while it can."""
        self._stalled_reads = 0

    @property
    def broker(self) -> Broker:
        if self._broker is None:
            raise BrokerStateError(f"sync target {self.name} is not started")
        return self._broker

    # -- what a target implements ----------------------------------------------------------

    def describe(self) -> str:
        """The server, for messages (no credentials)."""
        return self.kind

    @abc.abstractmethod
    async def connect(self) -> None:
        """Connect once; raise SyncConfigurationError or TargetUnavailableError."""

    @abc.abstractmethod
    async def send(self, records: list[Record]) -> None:
        """Send records (in log order) and return once the server confirmed; idempotent."""

    async def resume_point(self) -> int | None:
        """After (re)connecting: the next offset the server already holds, if it knows.

        Also the heartbeat of an idle mirror (every ``heartbeat_interval``): it must talk to
        the server, raising :class:`TargetUnavailableError` when it does not answer.
        """
        return None

    async def disconnect(self) -> None:
        """Release the client."""

    def extra_status(self) -> dict[str, Any]:
        return {}

    def extra_state(self) -> dict[str, Any]:
        """More cursors to save with the outbound one."""
        return {}

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self, broker: Broker) -> None:
        """Check the configuration against the server, then start following the log.

        Bad configuration raises :class:`SyncConfigurationError`; an unreachable server only
        logs a warning (the broker works without it, and the target catches up later).
        """
        self.service, source = choose_service(self, broker)
        logger.info("%s: service %r (from %s)", self.name, self.service, source)
        self._broker = broker
        store = broker.store
        self.producer = await store.get_value(PRODUCER_KEY) or ""
        if not self.producer:
            self.producer = str(uuid.uuid4())
            await store.set_value(PRODUCER_KEY, self.producer)
        state = await store.get_value(STATE_PREFIX + self.name) or {}
        await self.load_state(state)
        if "cursor" in state:
            self.cursor = int(state["cursor"])
        elif self.config.start_from is StartFrom.LATEST:
            self.cursor = broker.log.next_offset
        else:
            self.cursor = broker.log.start_offset
        try:
            await asyncio.wait_for(self.connect(), self.config.connect_timeout * 2)
        except TimeoutError as exc:
            self.health.failed(TargetUnavailableError(f"no answer within {exc}"))
        except TargetUnavailableError as exc:
            self.health.failed(exc)
        else:
            self.health.connected = True
        self.spawn(self._mirror_loop, "mirror")
        self.spawn(self._status_loop, "status")

    async def load_state(self, state: dict[str, Any]) -> None:
        """Restore the subclass's cursors from the saved state."""

    async def close(self) -> None:
        """Stop the loops, save the cursors and the status, release the client."""
        self.closing = True
        pending = set(self._tasks)
        while pending:
            # Cancel again until they are gone: on Python 3.11 asyncio.wait_for (used inside
            # redis-py) can swallow a cancellation that arrives as its inner call completes.
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=0.1)
        self._tasks.clear()
        if self._broker is not None:
            with contextlib.suppress(Exception):
                await self.save(running=False)
        await self.disconnect()

    def spawn(self, loop: Callable[[], Awaitable[None]], what: str) -> None:
        """Run ``loop`` as a task of this target, logging (not hiding) a crash."""

        async def guarded() -> None:
            try:
                await loop()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("%s: the %s loop stopped", self.name, what)
                raise

        self._tasks.append(asyncio.create_task(guarded(), name=f"sync-{self.name}-{what}"))

    async def retry_after_failure(self, exc: SyncError) -> None:
        """Note a failure, wait the backoff, and resynchronise with the server afterwards."""
        delay = self.health.failed(exc)
        self._resume = True
        await asyncio.sleep(delay)

    # -- the outbound mirror ---------------------------------------------------------------

    def wanted(self) -> bool:
        """Whether this target mirrors the log at all."""
        return True

    async def _mirror_loop(self) -> None:
        broker = self.broker
        if not self.wanted():
            return
        while not self.closing:
            try:
                if self._resume:
                    at = await self.resume_point()
                    if at is not None and at > self.cursor:
                        self.cursor = min(at, broker.visible_offset)
                        self._cursor_moved.set()
                    self._resume = False
                try:
                    records = self._read()
                except (LocalBrokerError, OSError) as exc:
                    # Damage in the log (or a disk error): never skip it, never end the loop.
                    await self._stalled(exc)
                    continue
                if self.stall is not None:
                    logger.warning(
                        "%s: the mirror reads again at offset %d (it was stalled: %s)",
                        self.name,
                        self.cursor,
                        self.stall.cause,
                    )
                    self.stall, self._stalled_reads = None, 0
                if not records:
                    self.health.ok()
                    try:
                        async with asyncio.timeout(self.config.heartbeat_interval):
                            await broker.wait_for_append(self.cursor)
                    except TimeoutError:
                        # Idle: look at the server (resume_point) so that "connected" stays
                        # true only while it answers.
                        self._resume = True
                    continue
                await self.send(records)
            except SyncError as exc:
                await self.retry_after_failure(exc)
                continue
            self.health.ok()
            self.cursor = records[-1].offset + 1
            self.sent += len(records)
            self._cursor_moved.set()

    async def _stalled(self, error: Exception) -> None:
        """The read at the cursor fails: say so once, loudly, then wait (backing off)."""
        cause = str(error) or repr(error)
        if self.stall is None or self.stall.cause != cause:
            self.stall, self._stalled_reads = Stall(self.cursor, cause, time.time()), 0
            self.health.last_error, self.health.last_error_at = cause, self.stall.since
            logger.error(
                "%s: the mirror is stalled at offset %d: %s; nothing after this offset is "
                "sent until the read succeeds (it retries, backing off to every %.0f s)%s",
                self.name,
                self.cursor,
                cause,
                STALLED_RETRY_MAX,
                f"; {REPAIR_HINT}" if isinstance(error, CorruptLogError) else "",
            )
        self._stalled_reads += 1
        await asyncio.sleep(min(STALLED_RETRY_MAX, 0.25 * 2**self._stalled_reads))

    async def wait_mirrored(self, timeout: float = 30.0) -> None:
        """Wait until the server confirmed every event that the log held when called.

        Raises :class:`TimeoutError` naming the target, its cursor and what it waits for when
        that takes longer than ``timeout`` seconds (the server is down, say). A target that
        does not mirror the log (``outbound=False``) returns at once.
        """
        if not self.wanted():
            return
        end = self.broker.visible_offset
        try:
            async with asyncio.timeout(timeout):
                while self.cursor < end:
                    self._cursor_moved.clear()
                    await self._cursor_moved.wait()
        except TimeoutError:
            raise TimeoutError(
                f"{self.name}: after {timeout} s, {self.describe()} has confirmed events up to "
                f"offset {self.cursor} of {end} (last error: {self.health.last_error})"
            ) from None

    def envelopes(self, records: list[Record]) -> list[tuple[int, dict[str, Any]]]:
        """``(offset, envelope)`` of ``records``; a record that does not decode is logged as
        an ERROR naming its offset and skipped (retrying cannot make it decode)."""
        out = []
        for record in records:
            try:
                out.append((record.offset, decode_envelope(record.payload)))
            except SerializationError as exc:
                logger.error("%s: skipping offset %d: %s", self.name, record.offset, exc)
        return out

    def outgoing(
        self, records: list[Record], skip: Collection[int] = ()
    ) -> list[tuple[int, dict[str, Any]]]:
        """:meth:`envelopes` of the records to send: not those at an offset in ``skip``, nor
        those appended from a server of this kind (an event never goes back where it came
        from)."""
        if skip:
            records = [record for record in records if record.offset not in skip]
        envelopes = self.envelopes(records)
        prefix = self.origin_prefix
        if prefix is None:
            return envelopes
        return [(o, e) for o, e in envelopes if not origin_of(e).startswith(prefix)]

    def _read(self) -> list[Record]:
        broker = self.broker
        try:
            return broker.read_log(self.cursor, self.config.batch_size)
        except NotFoundError:
            start = broker.log.start_offset
            if self.cursor >= start:
                raise
            logger.error(
                "%s: offsets %d..%d were deleted from the log before they were sent; "
                "going on from %d",
                self.name,
                self.cursor,
                start - 1,
                start,
            )
            self.cursor = start
            return broker.read_log(self.cursor, self.config.batch_size)

    # -- status ----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Connected, cursor, backlog (events not yet sent), last error, throughput (events/s)."""
        now = time.monotonic()
        rate = 0.0
        if self._rate:
            then, sent = self._rate[0]
            if now - then > 0:
                rate = (self.sent - sent) / (now - then)
        backlog = 0
        if self._broker is not None and self.wanted():
            backlog = max(0, self._broker.visible_offset - self.cursor)
        return {
            "name": self.name,
            "kind": self.kind,
            "target": self.describe(),
            "service": self.service,
            "connected": self.health.connected,
            "mirrors": self.wanted(),
            "cursor": self.cursor,
            "backlog": backlog,
            "sent": self.sent,
            "throughput": round(rate, 1),
            "last_error": self.health.last_error,
            "last_error_at": self.health.last_error_at,
            # The offset it cannot read and why (damage in the log), or None.
            "stalled": None
            if self.stall is None
            else {
                "position": self.stall.position,
                "cause": self.stall.cause,
                "since": self.stall.since,
            },
            **self.extra_status(),
        }

    async def save(self, *, running: bool = True) -> None:
        """Write the cursors and the status to the state store."""
        status = self.status()
        status.update(running=running, updated=time.time(), pid=os.getpid())
        await self.broker.store.set_values(
            {
                STATE_PREFIX + self.name: {"cursor": self.cursor, **self.extra_state()},
                SYNC_STATUS_PREFIX + self.name: status,
            }
        )

    async def _status_loop(self) -> None:
        while not self.closing:
            self._rate.append((time.monotonic(), self.sent))
            try:
                await self.save()
            except Exception:
                logger.exception("%s: could not save the sync status; will retry", self.name)
            await asyncio.sleep(self.config.status_interval)

"""The embedded broker."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, TypedDict, TypeVar, Unpack, runtime_checkable

from localbroker.broker.chains import Chain, build_chain
from localbroker.broker.clock import Clock, LoopClock
from localbroker.broker.context import current_scope
from localbroker.broker.delivery import Handler, HandlerSpec
from localbroker.broker.dlq import DeadLetterQueue
from localbroker.broker.health import Health
from localbroker.broker.indexer import EventIndexer
from localbroker.broker.middleware import Middleware, PublishNext, chain_publish, overrides
from localbroker.broker.positions import handed_out
from localbroker.broker.router import Router
from localbroker.broker.subscriber import SubscriberRuntime, Subscription
from localbroker.broker.writer import LogWriter
from localbroker.config import (
    BrokerConfig,
    MissingState,
    RetryPolicy,
    StartFrom,
    SubscriberConfig,
    load_config,
)
from localbroker.errors import (
    BrokerStateError,
    ConfigurationError,
    MissingStateError,
    SerializationError,
    SubscriberStalledError,
)
from localbroker.events import (
    ENVELOPE_FIELDS,
    Event,
    GenericEvent,
    PublishResult,
    check_keys,
    encode_event,
)
from localbroker.log import CommitLog, Record
from localbroker.log.gaps import GAPS_FILE
from localbroker.registry import EventRegistry, Upcaster
from localbroker.schemas import SchemaRecorder
from localbroker.state.event_index import EventIndex, IndexMeta
from localbroker.state.retention import HistoryTrimmer
from localbroker.state.store import StateStore, state_exists
from localbroker.topics import TopicPattern, validate_topic

__all__ = ["SYNC_STATUS_PREFIX", "Broker", "ColdReader", "Extension", "StatusReporter"]

logger = logging.getLogger("localbroker")

F = TypeVar("F", bound=Handler)
U = TypeVar("U", bound=Upcaster)
T = TypeVar("T")


@runtime_checkable
class Extension(Protocol):
    """Something started and stopped with the broker (sync targets, the archive, ...)."""

    async def start(self, broker: Broker) -> None: ...

    async def close(self) -> None: ...


#: Key prefix in the state store's key/value table under which status reporters persist their
#: status (``sync.status.<name>``), so tools in another process (CLI, dashboard) can show it.
SYNC_STATUS_PREFIX = "sync.status."


@runtime_checkable
class StatusReporter(Protocol):
    """An extension that reports its status (sync targets): see :meth:`Broker.sync_status`."""

    name: str

    def status(self) -> dict[str, Any]: ...


@runtime_checkable
class ColdReader(Protocol):
    """Serves records that retention deleted from the local log (e.g. from an S3 archive).

    An extension sets :attr:`Broker.cold_reader` in its ``start``; subscribers whose position
    is below the local log's start then read from it, and ``start_from="earliest"`` begins at
    its :meth:`first_offset`.
    """

    def first_offset(self) -> int | None:
        """The first offset it can serve, or None when it holds nothing."""
        ...

    async def read(self, offset: int, max_records: int) -> list[Record]:
        """Up to ``max_records`` records from ``offset`` on, in order, without gaps.

        Raises :class:`~localbroker.errors.NotFoundError` for an offset it does not hold, and a
        :class:`~localbroker.errors.LocalBrokerError` with ``retriable`` set when it may pass.
        """
        ...


class SubscribeOptions(TypedDict, total=False):
    """Options of :meth:`Broker.subscribe` and :meth:`Broker.subscriber`."""

    name: str
    """The subscriber's name: its durable position and DLQ (default: the handler's path)."""
    concurrency: int
    """Handlers running at once (events of one key never run together); default 1."""
    ack_timeout: float
    """Override of the broker's ``ack_timeout``."""
    max_tries: int
    """Override of the broker's ``max_tries``."""
    retry: RetryPolicy
    """Override of the broker's backoff between tries."""
    start_from: StartFrom | int | datetime | str
    """For a subscriber never seen before: ``"earliest"``, ``"latest"``, an offset or a time."""
    dont_retry: Iterable[type[BaseException]]
    """Exception types that send the event straight to the DLQ."""


class Broker:
    """An embedded event broker over a directory.

    Example::

        broker = Broker("./data")

        @broker.subscriber("user.created", name="email")
        async def welcome(event: UserCreated) -> None: ...

        async with broker:
            meta = await broker.publish(UserCreated(user_id="u1", name="Ann"))

    Options (``ack_timeout``, ``max_tries``, ``fsync``, ``segment_bytes``, ...) are those of
    :class:`~localbroker.config.BrokerConfig`, given as keywords or ``config=``.
    ``sync=[...]`` attaches sync targets (``localbroker.sync``); they are extensions like any
    other, started after the broker and stopped before it. ``clock=`` replaces the event
    loop's clock in the delivery timers (retry backoff, ack deadlines): tests pass a
    :class:`~localbroker.testing.FakeClock`. ``middleware=[...]`` wraps publishing and
    deliveries (see :meth:`add_middleware`).
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        config: BrokerConfig | None = None,
        extensions: Sequence[Extension] = (),
        sync: Sequence[Extension] = (),
        clock: Clock | None = None,
        middleware: Sequence[Middleware] = (),
        **options: Any,
    ) -> None:
        if config is not None and options:
            raise ConfigurationError("pass either config= or keyword options, not both")
        if config is None:
            config = load_config(data_dir=data_dir, **options)
        elif data_dir is not None:
            config = config.model_copy(update={"data_dir": Path(data_dir)})
        self.config = config
        self.data_dir = Path(config.data_dir)
        self.extensions = [*extensions, *sync]
        self._clock = clock
        self._middleware: list[Middleware] = []
        self._publish_chain: PublishNext | None = None
        self.delivery_middleware: tuple[Middleware, ...] = ()
        """The middleware that wraps deliveries, outermost first (see :meth:`add_middleware`)."""
        for mw in middleware:
            self.add_middleware(mw)
        self._subscriptions: dict[str, Subscription] = {}
        self._runtimes: dict[str, SubscriberRuntime] = {}
        self._log: CommitLog | None = None
        self._store: StateStore | None = None
        self._index: EventIndex | None = None
        self._writer: LogWriter | None = None
        self._indexer: EventIndexer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._append_event: asyncio.Event | None = None
        self._idle_event: asyncio.Event | None = None
        self.visible_offset = 0
        self.cold_reader: ColdReader | None = None
        """Set by an extension to serve offsets below the local log's start (see ColdReader)."""
        self._started = False
        self._closed = False
        # Set when state.db was missing and is recreated: where new subscribers start.
        self._recreate_from: StartFrom | None = None
        self._closing: asyncio.Task[None] | None = None
        # The broker's own blocking work (opening and closing the log, rolling it, scanning it
        # for chains) runs here, never in the event loop's default executor, which the
        # application may fill with work of its own.
        self._io = ThreadPoolExecutor(2, thread_name_prefix="localbroker-io")
        # The task that started the broker, and what a handler raised to stop the application
        # (SystemExit, KeyboardInterrupt): see _handler_raised_exit.
        self._owner: asyncio.Task[Any] | None = None
        self._handler_exit: BaseException | None = None
        self._owner_cancelled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self.dlq = DeadLetterQueue(lambda: self.store, self._wake_for_redelivery)
        """The dead letter queue: list, show, retry and discard entries."""
        self.registry = EventRegistry()
        """The event classes (by topic and version) and upcasters of this broker."""
        self._schemas = SchemaRecorder(self.registry, self._subscriptions)

    # -- registration ----------------------------------------------------------------------

    def subscriber(self, *topics: str, **options: Unpack[SubscribeOptions]) -> Callable[[F], F]:
        """Decorator registering a handler under subscriber ``name`` for ``topics``.

        ``topics`` are exact topics or patterns (``user.*``, ``user.>``). Each subscriber name
        has its own durable position: two names both receive every event; one name processes
        each event once. The options are those of :meth:`subscribe`.
        """

        def register(fn: F) -> F:
            self.subscribe(fn, *topics, **options)
            return fn

        return register

    def subscribe(
        self, handler: Handler, *topics: str, **options: Unpack[SubscribeOptions]
    ) -> Subscription:
        """Register ``handler`` under subscriber ``name`` for ``topics``.

        - ``concurrency``: handlers running at once (events of one key never run together).
        - ``ack_timeout`` / ``max_tries`` / ``retry``: override the broker's defaults.
        - ``start_from``: for a subscriber never seen before, ``"earliest"``, ``"latest"``,
          an offset or a datetime (default: the broker's ``start_from``).
        - ``dont_retry``: exception types that send the event straight to the DLQ.

        The annotation of the handler's event parameter narrows what it receives: a handler
        typed ``UserCreated`` on ``user.*`` receives ``user.created`` only (the other topics
        are not delivered to it: no failure), ``UserCreated | UserDeleted`` both topics, an
        untyped one (or typed :class:`Event`) every topic of the patterns as
        :class:`GenericEvent`. Each event is upcast to the version of the class it is
        delivered as (see :meth:`upcaster`); the classes are registered (:meth:`register`).

        Registering the same handler under the same name again changes nothing; another
        handler under a name already taken raises :class:`ConfigurationError`.
        """
        if not topics:
            raise ConfigurationError("subscribe needs at least one topic or pattern")
        name = options.get("name")
        start_from = options.get("start_from")
        for topic in topics:
            TopicPattern(topic)
        spec = HandlerSpec.inspect(handler)
        patterns = spec.receives(topics)
        name = (
            name
            or f"{getattr(handler, '__module__', '')}.{getattr(handler, '__qualname__', handler)}"
        )
        if isinstance(start_from, str):
            try:
                start_from = StartFrom(start_from)
            except ValueError:
                raise ConfigurationError(
                    f"start_from must be 'earliest', 'latest', an offset or a datetime, not {start_from!r}"
                ) from None
        try:
            config = SubscriberConfig(
                ack_timeout=options.get("ack_timeout"),
                max_tries=options.get("max_tries"),
                retry=options.get("retry"),
                concurrency=options.get("concurrency", 1),
                start_from=start_from,
                dont_retry=tuple(options.get("dont_retry", ())),
            )
        except ValueError as exc:
            raise ConfigurationError(f"invalid options for subscriber {name!r}: {exc}") from exc
        existing = self._subscriptions.get(name)
        if existing is not None:
            if existing.handler.fn is handler and set(existing.patterns) == set(patterns):
                return existing
            raise ConfigurationError(
                f"subscriber {name!r} is already registered with handler "
                f"{getattr(existing.handler.fn, '__qualname__', existing.handler.fn)}; "
                "give the second handler its own name"
            )
        self._register([c for c in spec.event_types if c.__topic__ is not None], subscriber=name)
        subscription = Subscription(name=name, patterns=patterns, handler=spec, config=config)
        self._subscriptions[name] = subscription
        if self._started:
            task = asyncio.get_running_loop().create_task(self._start_subscriber(subscription))
            self._tasks.append(task)
        return subscription

    def add_middleware(self, middleware: Middleware) -> None:
        """Wrap publishing and each delivery in ``middleware`` (see :class:`Middleware`).

        Middleware runs in the order it was added, the first added outermost: it sees the
        events first, and the results or exception last. Adding the same object again
        changes nothing. Takes effect for the next publish and the next try.
        """
        if any(mw is middleware for mw in self._middleware):
            return
        self._middleware.append(middleware)
        publishing = [mw for mw in self._middleware if overrides(mw, "publish")]
        self._publish_chain = (
            chain_publish(publishing, self._publish_through) if publishing else None
        )
        self.delivery_middleware = tuple(mw for mw in self._middleware if overrides(mw, "deliver"))

    @property
    def middleware(self) -> list[Middleware]:
        """The middleware added, outermost first."""
        return list(self._middleware)

    def upcaster(self, topic: str, *, from_version: int) -> Callable[[U], U]:
        """Decorator registering an upcaster: ``topic``'s payload from ``from_version`` to the next.

        The function takes the payload (``data``) of a stored event of ``from_version`` and
        returns the payload of ``from_version + 1``; upcasters chain (1 -> 2 -> 3). They are
        applied whenever an event is read for a handler (live, replay, DLQ retry, events
        that came in through sync) and by archive reads given ``broker.registry``; stored
        events are never rewritten. An upcaster that raises sends the event to the DLQ,
        naming it (fix it, then retry the entry)::

            @broker.upcaster("user.created", from_version=1)
            def add_email(data: dict) -> dict:
                return {**data, "email": f"{data['name']}@unknown.invalid"}
        """

        def register(fn: U) -> U:
            self.registry.add_upcaster(topic, from_version, fn)
            return fn

        return register

    def register(self, *classes: type[Event]) -> None:
        """Register event classes (a handler's classes and published ones are registered anyway).

        Another class for the same topic and version raises :class:`ConfigurationError`
        now; classes of one topic with no upcasters between their versions raise it when
        the broker starts (or now, once it runs). Registered classes are recorded in the
        data directory's schema registry (``localbroker schema list``).
        """
        self._register(classes)

    def include_router(self, router: Router) -> None:
        """Subscribe the handlers of ``router`` and take its event classes and upcasters.

        Example::

            broker = Broker("./data")
            broker.include_router(users.router)
        """
        trial = self.registry.copy()
        trial.merge(router.registry)  # raises before anything changes
        if self._started:
            trial.check()
        self.registry.merge(router.registry)
        for routed in router.handlers:
            self.subscribe(routed.handler, *routed.topics, **routed.options)

    def _register(self, classes: Sequence[type[Event]], subscriber: str | None = None) -> None:
        if self._started:
            # Running: nothing checks later, so refuse what would not fit before keeping it.
            trial = self.registry.copy()
            trial.register(*classes, subscriber=subscriber)
            trial.check()
        self.registry.register(*classes, subscriber=subscriber)
        self._schemas.touch()

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Broker:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Open (and recover) the log and the state, then start delivering.

        If anything fails, whatever was opened is released (files, threads, the writer lock)
        before the error is raised.
        """
        if self._closed:
            await self._reset_after_close()
        elif self._started:
            return
        self.registry.check()  # event classes without upcasters between their versions
        cfg = self.config
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._owner = asyncio.current_task()
        self._append_event = asyncio.Event()
        self._idle_event = asyncio.Event()
        log = CommitLog(
            self.data_dir / "log",
            segment_bytes=cfg.segment_bytes,
            segment_max_age=cfg.segment_max_age,
        )
        self._log = await self._blocking(log.open)
        self._started = True  # from here on, close() releases whatever was opened
        try:
            await self._open()
        except BaseException:
            try:
                await self.close()
            except Exception:
                logger.exception("could not close %s after a failed start", self.data_dir)
            raise
        logger.info(
            "broker started on %s: offsets %d..%d, %d subscribers",
            self.data_dir,
            self.log.start_offset,
            self.log.next_offset,
            len(self._runtimes),
        )

    async def _reset_after_close(self) -> None:
        """Make a closed broker startable again (a second ``async with broker:``).

        What belonged to the last run (files, tasks, threads, queues) is dropped; what the
        application declared (subscriptions, classes, upcasters, middleware) stays. The last
        run's close may still be going on (started by a handler's ``SystemExit``): wait for it.
        """
        closing = self._closing
        if closing is not None and not closing.done():
            with contextlib.suppress(Exception):
                await asyncio.shield(closing)
        self._started = self._closed = False
        self._closing = None
        self._tasks = []
        self._runtimes = {}
        self._log = self._store = self._index = None
        self._writer = None
        self._indexer = None
        self.cold_reader = None
        self._recreate_from = None
        self._handler_exit = None
        self._owner_cancelled = False
        self.visible_offset = 0
        self._io.shutdown(wait=False)  # shut down by the close already (or never used)
        self._io = ThreadPoolExecutor(2, thread_name_prefix="localbroker-io")

    async def _open(self) -> None:
        cfg = self.config
        log = self.log
        state_path = self.data_dir / "state.db"
        if not state_exists(state_path) and log.next_offset > 0:
            self._recreate_from = self._missing_state(state_path)
        self._store = await StateStore.open(state_path, create=True)
        await self._schemas.record(self._store)
        if cfg.index_events:
            self._index = await EventIndex.open(self.data_dir / "index.db")
        await self._keep_offsets_unique()
        self.visible_offset = log.next_offset
        if self._index is not None:
            self._indexer = EventIndexer(self, self._index)
        self._writer = LogWriter(
            log,
            fsync=cfg.fsync,
            fsync_interval=cfg.fsync_interval_ms / 1000,
            on_visible=self._on_visible,
            on_appended=self._indexer.feed if self._indexer is not None else None,
        )
        self._writer.start()
        # Extensions first: one may provide the cold reader that new subscribers starting
        # from "earliest" begin with.
        for extension in self.extensions:
            await extension.start(self)
        if self._indexer is not None:
            self._tasks.append(asyncio.create_task(self._indexer.run(), name="localbroker-indexer"))
        for subscription in list(self._subscriptions.values()):
            await self._start_subscriber(subscription)
        self._tasks.append(asyncio.create_task(self._flush_loop(), name="localbroker-flush"))
        self._tasks.append(asyncio.create_task(self._control_loop(), name="localbroker-control"))
        if cfg.history_retention is not None:
            trimmer = HistoryTrimmer(self.store, cfg.history_retention)
            self._tasks.append(asyncio.create_task(trimmer.run(), name="localbroker-history"))

    def _missing_state(self, state_path: Path) -> StartFrom:
        """The log holds events but ``state.db`` is gone: refuse, or recreate as configured."""
        log = self.log
        choice = self.config.on_missing_state
        if choice is MissingState.FAIL:
            raise MissingStateError(self.data_dir, log.start_offset, log.next_offset)
        logger.warning(
            "%s was missing although the log holds offsets %d..%d: recreating it "
            "(on_missing_state=%s). Subscriber positions, the DLQ, the error history and "
            "extension cursors from before are lost; every subscriber starts at the %s",
            state_path,
            log.start_offset,
            log.next_offset - 1,
            choice.value,
            "first event in the log" if choice is MissingState.EARLIEST else "end of the log",
        )
        return StartFrom(choice.value)

    async def close(self) -> None:
        """Stop delivering, write everything buffered, persist positions, close files.

        Plain ``def`` handlers still running get ``handler_shutdown_timeout`` seconds, then
        are abandoned with a warning. Calling it again, or while it runs, waits for the same
        close. If a handler raised ``SystemExit`` or ``KeyboardInterrupt``, the task that
        started the broker gets that exception from here (so from ``async with broker:``).
        """
        if not self._started:
            self._closed = True
            return
        closing = self._closing or self._begin_close()
        # Shielded: the application and a handler's SystemExit may both wait for this close,
        # and one of them being cancelled must not cut it short half way.
        await asyncio.shield(closing)
        exc = self._handler_exit
        if exc is not None and asyncio.current_task() is self._owner:
            self._handler_exit = None  # raised once
            if self._owner_cancelled and self._owner is not None:
                self._owner.uncancel()  # our cancel() is answered by this exception
            raise exc

    def _begin_close(self) -> asyncio.Task[None]:
        self._closed = True  # from now on publish() refuses
        self._closing = asyncio.create_task(self._close(), name="localbroker-close")
        return self._closing

    async def _close(self) -> None:
        try:
            for extension in reversed(self.extensions):
                try:
                    await extension.close()
                except Exception:
                    logger.exception("extension %r failed to close", extension)
            # Handlers first (a cancelled one stays in flight and is redelivered after a
            # restart), so that none publishes into a closed writer; then everything buffered
            # is written.
            timeout = self.config.handler_shutdown_timeout
            await asyncio.gather(*(r.stop(timeout) for r in self._runtimes.values()))
            if self._writer is not None:
                await self._writer.close()
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            if self._indexer is not None:
                with contextlib.suppress(Exception):
                    await self._indexer.catch_up()
            if self._store is not None:
                await self._flush(force=True)
                await self._store.release_subscribers(self._runtimes)
        finally:
            await self._close_files()
        logger.info("broker on %s closed at offset %d", self.data_dir, self.visible_offset)

    async def _keep_offsets_unique(self) -> None:
        """Never hand out again an offset that was handed out before the log lost it.

        A subscriber (or mirror, archive, index) whose position is beyond the end of the log
        read records the log no longer has: the offsets up to that position become a gap,
        logged at ERROR, and new events start after it (docs/log-format.md, "Gaps").
        """
        log = self.log
        beyond = {
            who: position
            for who, position in (await handed_out(self.store, self._index)).items()
            if position > log.next_offset
        }
        if not beyond:
            return
        readers = ", ".join(f"{who} at {position}" for who, position in beyond.items())
        end = log.next_offset
        gap = await asyncio.to_thread(
            log.skip_to,
            max(beyond.values()),
            f"the log ended at offset {end} but {readers} had read further "
            f"(records lost in a crash with fsync={self.config.fsync.value}, or an older copy "
            "of the log)",
        )
        if gap is not None:
            logger.error(
                "%s: %s were handed out but are not in the log (%s); they are recorded as "
                "lost in %s and new events start at offset %d",
                log.directory,
                gap.describe(),
                readers,
                GAPS_FILE,
                gap.end,
            )

    async def _close_files(self) -> None:
        """Close the state, the index and the log (and its writer lock), whatever fails."""
        for closing in (self._store, self._index):
            if closing is not None:
                try:
                    await closing.close()
                except Exception:
                    logger.exception("could not close %r", closing)
        if self._log is not None:
            await self._blocking(self._log.close)
        # Only the broker's own short work runs there (never handlers), and it is all done by
        # now: joining the idle threads is immediate, and leaves none behind.
        self._io.shutdown(wait=True)

    def _handler_raised_exit(self, subscriber: str, event_id: str, exc: BaseException) -> None:
        """A handler raised SystemExit or KeyboardInterrupt: stop the broker, then the app.

        The broker closes at once (positions saved; the try was recorded as failed). The
        exception then reaches the application the way asyncio.run delivers Ctrl-C: the task
        that started the broker is cancelled, and its ``close()`` (``async with broker:``)
        raises the exception in place of the CancelledError. With no such task left, the
        exception is raised out of the event loop once closed, as asyncio does with a
        SystemExit raised in a task.
        """
        if self._closing is not None:
            return  # already closing: the application is on its way out
        logger.error(
            "subscriber %s: handler raised %r on event %s; closing the broker and stopping "
            "the application (the try counts as failed)",
            subscriber,
            exc,
            event_id,
        )
        self._handler_exit = exc
        for runtime in self._runtimes.values():
            runtime.halt()  # now, not once the close task runs: no other handler starts
        closing = self._begin_close()
        owner = self._owner
        if owner is not None and not owner.done():
            self._owner_cancelled = True
            owner.cancel(msg=f"localbroker: a handler of {subscriber} raised {exc!r}")
        else:
            self._owner = None

            def stop_loop(closing: asyncio.Task[None]) -> None:
                # Done callbacks run from the event loop itself, which lets SystemExit and
                # KeyboardInterrupt through: run_forever() ends with it.
                raise exc

            closing.add_done_callback(stop_loop)

    async def _blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in the broker's own threads (see ``_io``)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._io, functools.partial(fn, *args))

    async def _start_subscriber(self, subscription: Subscription) -> None:
        store = self.store
        state = await store.get_subscriber(subscription.name)
        patterns = list(subscription.patterns)
        if state is None:
            start_from = (
                self._recreate_from or subscription.config.start_from or self.config.start_from
            )
            start = await self._start_offset(start_from)
            state = await store.create_subscriber(subscription.name, patterns, start)
            if self._recreate_from is not None:
                self._warn_recreated(subscription.name, start)
        elif state.patterns != patterns:
            await store.update_patterns(subscription.name, patterns)
            state.patterns = patterns
        restored = await store.deliveries_since(subscription.name, state.committed)
        runtime = SubscriberRuntime(self, subscription, state, restored, self.config)
        self._runtimes[subscription.name] = runtime
        runtime.start()

    def _warn_recreated(self, name: str, start: int) -> None:
        end = self.log.next_offset
        if self._recreate_from is StartFrom.LATEST:
            first = self.first_offset
            logger.warning(
                "subscriber %s recreated at the end of the log (offset %d): it skips the %d "
                "events at offsets %d..%d",
                name,
                start,
                end - first,
                first,
                end - 1,
            )
        else:
            logger.warning(
                "subscriber %s recreated at offset %d: the %d events at offsets %d..%d are "
                "delivered to it again",
                name,
                start,
                end - start,
                start,
                end - 1,
            )

    async def _start_offset(self, start_from: StartFrom | int | datetime) -> int:
        log = self.log
        first = self.first_offset
        if start_from is StartFrom.EARLIEST:
            return first
        if start_from is StartFrom.LATEST:
            return log.next_offset
        if isinstance(start_from, int):
            if not first <= start_from <= log.next_offset:
                raise ConfigurationError(
                    f"start_from offset {start_from} is outside the log "
                    f"({first}..{log.next_offset})"
                )
            return start_from
        return await self._blocking(self._offset_at_time, start_from)

    def _offset_at_time(self, when: datetime) -> int:
        """First offset whose append time is at or after ``when``."""
        target = int(when.timestamp() * 1000)
        log = self.log
        for segment in log.segments():
            if segment.last_timestamp is None or segment.last_timestamp < target:
                continue
            offset = segment.base_offset
            while offset < segment.next_offset:
                for record in log.read(offset, max_records=1000):
                    if record.timestamp >= target:
                        return record.offset
                    offset = record.offset + 1
        return log.next_offset

    # -- publishing ------------------------------------------------------------------------

    async def publish(
        self,
        event: Event | str,
        data: dict[str, Any] | None = None,
        *,
        key: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> PublishResult:
        """Store an event in the log; return its id and offset once stored (durably, by policy).

        ``event`` is an :class:`Event` instance, or a topic name with ``data`` as its payload
        (untyped publishing). Published from inside a handler, the event joins the handled
        event's chain (correlation id) with the handled event as its cause.
        """
        prepared = self._prepare(event, data, key=key, headers=headers)
        if self._publish_chain is not None:
            results = await self._publish_chain([prepared])
            if not results:
                raise ConfigurationError(
                    f"a publish middleware returned no result for event {prepared.id}: "
                    "return what call_next returned"
                )
            return results[0]
        payload = encode_event(prepared)
        now = time.time()
        offset = await self._append([(int(now * 1000), payload)], [_meta(prepared, now)])
        return PublishResult(prepared.id, prepared.topic, offset, prepared.correlation_id)

    async def publish_many(self, events: Iterable[Event]) -> list[PublishResult]:
        """Store several events with one write and one fsync; all are stored or none is."""
        prepared = [self._prepare(e, None) for e in events]
        if not prepared:
            return []
        if self._publish_chain is not None:
            return await self._publish_chain(prepared)
        return await self._write(prepared)

    async def _publish_through(self, events: list[Event]) -> list[PublishResult]:
        """The end of the publish middleware chain: what it passes on is prepared again (an
        event a middleware made joins the chain too), then written."""
        if not isinstance(events, list) or not all(isinstance(e, Event) for e in events):
            raise SerializationError(
                f"publish middleware passed on {events!r}; call_next takes a list of events"
            )
        return await self._write([self._prepare(e, None) for e in events])

    async def _write(self, prepared: list[Event]) -> list[PublishResult]:
        # The record's timestamp is the append time (not the event's own time, which an
        # inbound synced event keeps from its origin), so it grows with the offset.
        now = time.time()
        records = [(int(now * 1000), encode_event(e)) for e in prepared]
        first = await self._append(records, [_meta(e, now) for e in prepared])
        return [
            PublishResult(e.id, e.topic, first + i, e.correlation_id)
            for i, e in enumerate(prepared)
        ]

    def publish_sync(
        self,
        event: Event | str,
        data: dict[str, Any] | None = None,
        *,
        key: str | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = 30.0,
    ) -> PublishResult:
        """:meth:`publish` from a thread (a plain ``def`` handler): blocks until stored.

        The chain is kept: an event published from a handler's thread joins its chain.
        Must not be called from the event loop's own thread (it would wait on itself).
        """
        loop = self._loop
        if loop is None or self._closed:
            raise BrokerStateError.not_running()
        if threading.get_ident() == self._loop_thread:
            raise BrokerStateError(
                "publish_sync called on the event loop: use 'await publish(...)'"
            )
        # run_coroutine_threadsafe runs the coroutine in a copy of this thread's context, so
        # the chain scope set for the handler's thread comes along.
        future = asyncio.run_coroutine_threadsafe(
            self.publish(event, data, key=key, headers=headers), loop
        )
        return future.result(timeout)

    def _prepare(
        self,
        event: Event | str,
        data: dict[str, Any] | None,
        *,
        key: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Event:
        if isinstance(event, str):
            if data is not None and not isinstance(data, dict):
                raise SerializationError(
                    f"payload for {event!r} must be a dict, not {type(data).__name__}"
                )
            clash = ENVELOPE_FIELDS.intersection(data or {})
            if clash:
                raise SerializationError(
                    f"payload for {event!r} uses envelope field names {sorted(clash)}; "
                    "pass them as keywords or rename them"
                )
            topic = validate_topic(event)
            # The payload is taken to be of the newest version the broker knows for the topic.
            newest = self.registry.latest(topic)
            version = newest.__version__ if newest is not None else 1
            try:
                event = GenericEvent(
                    topic=topic, key=key, version=version, headers=headers or {}, **(data or {})
                )
            except TypeError:
                check_keys(data, topic)  # "keywords must be strings": name the key instead
                raise
        elif isinstance(event, Event):
            if data is not None:
                raise SerializationError(
                    "data= is only for untyped publishing: publish(topic, data)"
                )
            validate_topic(event.topic)
            if key is not None or headers:
                event = event.model_copy(
                    update={
                        k: v for k, v in {"key": key, "headers": headers}.items() if v is not None
                    }
                )
        else:
            raise SerializationError(
                f"publish takes an Event or a topic name, not {type(event).__name__}"
            )
        cls = type(event)
        if cls.__topic__ is not None and cls not in self.registry:
            self._register([cls])  # ConfigurationError: nothing is stored
        # Fill in the chain in place, so the caller's event shows the ids it was stored with.
        scope = current_scope()
        self._schemas.note(event, scope)
        if event.correlation_id is None:
            event.correlation_id = scope.correlation_id if scope is not None else event.id
        if scope is not None and scope.causation_id is not None and event.causation_id is None:
            event.causation_id = scope.causation_id
        return event

    async def _append(self, records: list[tuple[int, bytes]], metas: list[IndexMeta]) -> int:
        if self._writer is None or self._closed:
            raise BrokerStateError.not_running()
        return await self._writer.append(records, metas)

    def _on_visible(self, next_offset: int) -> None:
        self.visible_offset = next_offset
        assert self._append_event is not None
        self._append_event.set()

    async def wait_for_append(self, offset: int) -> None:
        """Return once the log holds a record at ``offset`` (used by readers of the log)."""
        event = self._append_event
        assert event is not None
        while self.visible_offset <= offset:
            if event.is_set():
                # Everybody waiting was woken; re-arm for the next append.
                event.clear()
            await event.wait()

    def read_log(self, offset: int, max_records: int) -> list[Record]:
        """Records from ``offset`` that subscribers may see (stored according to the policy)."""
        records = self.log.read(offset, max_records=max_records)
        visible = self.visible_offset
        if records and records[-1].offset >= visible:
            records = [r for r in records if r.offset < visible]
        return records

    async def fetch_log(self, offset: int, max_records: int) -> list[Record]:
        """Like :meth:`read_log`, but offsets deleted locally come from the cold reader."""
        start = self.log.start_offset
        if offset < start and self.cold_reader is not None:
            # Stop at the local start: the rest is read locally, so nothing comes twice.
            return await self.cold_reader.read(offset, min(max_records, start - offset))
        return self.read_log(offset, max_records)

    @property
    def first_offset(self) -> int:
        """The first offset subscribers can read: the cold reader's, else the local log's."""
        start = self.log.start_offset
        cold = self.cold_reader.first_offset() if self.cold_reader is not None else None
        return start if cold is None else min(cold, start)

    # -- state -----------------------------------------------------------------------------

    @property
    def log(self) -> CommitLog:
        """The commit log (open while the broker runs)."""
        if self._log is None:
            raise BrokerStateError.not_running()
        return self._log

    @property
    def store(self) -> StateStore:
        """The state store (open while the broker runs)."""
        if self._store is None:
            raise BrokerStateError.not_running()
        return self._store

    @property
    def clock(self) -> Clock:
        """The clock of the delivery timers: the one given, else the running loop's."""
        if self._clock is not None:
            return self._clock
        if self._loop is None:
            raise BrokerStateError.not_running()
        return LoopClock(self._loop)

    @property
    def subscriptions(self) -> dict[str, Subscription]:
        """Registered subscriptions by name."""
        return dict(self._subscriptions)

    def sync_status(self) -> dict[str, dict[str, Any]]:
        """The status of every extension that reports one (sync targets), by name.

        Example: ``broker.sync_status()["redis"]["backlog"]``.
        """
        return {e.name: e.status() for e in self.extensions if isinstance(e, StatusReporter)}

    def health(self) -> Health:
        """Whether every subscriber can read on, and which offsets the log has lost.

        Example::

            health = broker.health()
            if not health.ok:
                for sub in health.stalled:   # e.g. a damaged record in the log
                    print(sub.name, sub.position, sub.stall.cause)
        """
        return Health.of((r.health() for r in self._runtimes.values()), self.log.gaps)

    def runtime(self, name: str) -> SubscriberRuntime | None:
        """The running queue of subscriber ``name`` in this process, if any."""
        return self._runtimes.get(name)

    def _wake_for_redelivery(self, subscriber: str) -> bool:
        runtime = self._runtimes.get(subscriber)
        if runtime is not None:
            runtime.notify_redelivery()
        return runtime is not None

    async def chain(self, correlation_id: str) -> Chain:
        """Every event of the chain started by ``correlation_id``, as a tree, with its deliveries."""
        if self._indexer is not None:
            await self._indexer.catch_up()
        await self._flush()  # the chain shows delivery states as of now
        return await build_chain(
            correlation_id, store=self.store, index=self._index, log=self.log, executor=self._io
        )

    async def wait_idle(self, timeout: float = 10.0) -> None:
        """Wait until every subscriber has handled (or dead-lettered) everything published.

        Deliveries waiting for a retry count as not idle. Raises ``TimeoutError``;
        :class:`BrokerStateError` once the broker is closed (by a handler's ``SystemExit``, say);
        :class:`SubscriberStalledError` as soon as a subscriber cannot read the log on (a
        damaged record: it would never become idle).
        """
        async with asyncio.timeout(timeout):
            while not self._idle():
                await self._wait_for_progress(0.05)

    def _idle(self) -> bool:
        """Every subscriber has handled everything; raises if one never will (see wait_idle)."""
        if self._idle_event is None:
            raise BrokerStateError.not_running()
        if all(r.idle for r in self._runtimes.values()):
            return True
        if self._closing is not None:
            raise BrokerStateError(
                f"the broker on {self.data_dir} was closed while waiting for it to be idle"
            ) from self._handler_exit
        for runtime in self._runtimes.values():
            if runtime.stall is not None:
                raise SubscriberStalledError(
                    runtime.name, runtime.stall.position, runtime.stall.cause
                )
        return False

    async def _wait_for_progress(self, at_most: float) -> None:
        """Return when a delivery finishes, or after ``at_most`` seconds."""
        assert self._idle_event is not None
        self._idle_event.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(at_most):
                await self._idle_event.wait()

    def _delivery_finished(self) -> None:
        if self._idle_event is not None:
            self._idle_event.set()

    async def _flush(self, *, force: bool = False) -> None:
        states = [r.snapshot() for r in self._runtimes.values() if force or r.dirty]
        if states:
            await self.store.save_subscribers(states, os.getpid())
        await self._schemas.save_if_changed(self.store)

    async def _flush_loop(self) -> None:
        interval = self.config.state_flush_interval
        last_heartbeat = 0.0
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            heartbeat = now - last_heartbeat >= 1.0
            try:
                await self._flush(force=heartbeat)
            except Exception:
                logger.exception("could not save subscriber positions; will retry")
                continue
            if heartbeat:
                last_heartbeat = now
                # An idle log still rolls its active segment by age, so that the segment
                # becomes sealed (and archivable, and removable by retention) on time.
                try:
                    await self._blocking(self.log.roll_if_due)
                except Exception:
                    logger.exception("could not roll the active segment")

    async def _control_loop(self) -> None:
        interval = self.config.control_poll_interval
        while True:
            await asyncio.sleep(interval)
            try:
                await self.dlq.execute_requests()
            except Exception:
                logger.exception("failed to carry out operator requests")


def _meta(event: Event, appended: float) -> IndexMeta:
    # The record's timestamp is int(appended * 1000): index the same (millisecond) time.
    return (
        event.id,
        event.topic,
        event.key,
        int(appended * 1000) / 1000,
        event.correlation_id,
        event.causation_id,
    )

"""Per-subscriber queues: reading the log, ordering by key, retries, ack timers, the DLQ."""

from __future__ import annotations

import asyncio
import collections
import contextvars
import dataclasses
import logging
import math
import time
import traceback
from collections.abc import Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from localbroker.broker.clock import Clock, Timer
from localbroker.broker.context import enter_handler, leave_handler
from localbroker.broker.delivery import (
    Delivery,
    DeliveryContext,
    Handler,
    HandlerCall,
    HandlerSpec,
)
from localbroker.broker.health import Stall, SubscriberHealth
from localbroker.broker.middleware import chain_deliver
from localbroker.broker.threads import HandlerThreads
from localbroker.config import BrokerConfig, RetryPolicy, SubscriberConfig
from localbroker.errors import (
    CorruptLogError,
    LocalBrokerError,
    NotFoundError,
    RejectEvent,
    SerializationError,
)
from localbroker.events import Event, decode_envelope
from localbroker.log.recovery import REPAIR_HINT
from localbroker.state.store import SubscriberState
from localbroker.topics import TopicPattern

if TYPE_CHECKING:
    from localbroker.broker.broker import Broker

__all__ = ["Subscription"]

logger = logging.getLogger("localbroker.delivery")

READ_BATCH = 512
#: Seconds between tries when reading fails with a retriable error (an unreachable archive).
READ_RETRY_DELAY = 1.0
#: Seconds between tries of a subscriber stalled on damage in the log (so that it goes on by
#: itself once the damage is gone, without a hot loop meanwhile).
STALLED_RETRY_DELAY = 5.0


@dataclasses.dataclass(frozen=True, slots=True)
class Subscription:
    """A handler registered under a subscriber name for one or more topic patterns."""

    name: str
    patterns: tuple[str, ...]
    handler: HandlerSpec
    config: SubscriberConfig

    def matcher(self) -> TopicMatcher:
        return TopicMatcher(self.patterns)


class TopicMatcher:
    """Matches topics against several patterns, remembering answers per topic."""

    __slots__ = ("_cache", "_patterns")

    def __init__(self, patterns: Sequence[str]) -> None:
        self._patterns = [TopicPattern(p) for p in patterns]
        self._cache: dict[str, bool] = {}

    def __call__(self, topic: str) -> bool:
        hit = self._cache.get(topic)
        if hit is None:
            hit = self._cache[topic] = any(p.matches(topic) for p in self._patterns)
        return hit


def histogram_bucket(seconds: float) -> str:
    """Bucket of a handler time: quarter powers of two of microseconds (~19% wide)."""
    micros = max(seconds * 1e6, 1.0)
    return str(int(math.log2(micros) * 4))


def histogram_quantile(hist: dict[str, int], q: float) -> float | None:
    """Approximate quantile (seconds) of a handler-time histogram."""
    total = sum(hist.values())
    if not total:
        return None
    rank = q * total
    seen = 0
    for bucket in sorted(hist, key=int):
        seen += hist[bucket]
        if seen >= rank:
            return float(2 ** ((int(bucket) + 0.5) / 4) / 1e6)
    return None


class SubscriberRuntime:
    """Delivers the log to one subscriber: its in-flight set, key order, tries and DLQ moves."""

    def __init__(
        self,
        broker: Broker,
        subscription: Subscription,
        state: SubscriberState,
        restored: dict[int, tuple[int, str]],
        defaults: BrokerConfig,
    ) -> None:
        self.broker = broker
        self.sub = subscription
        self.name = subscription.name
        self.state = state
        cfg = subscription.config
        self.ack_timeout = cfg.ack_timeout or defaults.ack_timeout
        self.max_tries = cfg.max_tries or defaults.max_tries
        self.retry: RetryPolicy = cfg.retry or defaults.retry
        self.max_in_flight = defaults.max_in_flight
        self._matches = subscription.matcher()
        self._dont_retry: tuple[type[BaseException], ...] = (
            RejectEvent,
            SerializationError,
            *cfg.dont_retry,
        )
        self.position = state.committed  # re-read everything not committed: in flight before
        # Finished offsets above the committed one, so that a delivery finished before a
        # restart is not handed out again; pruned below the committed offset now and then.
        self.done: set[int] = set(state.done)
        self._prune_done_at = 4 * self.max_in_flight
        # Deliveries above the committed offset that failed before a restart: keep counting
        # their tries, and never redeliver one that was finished (handled or dead-lettered).
        self._tries: dict[int, int] = {}
        for offset, (tries, status) in restored.items():
            if status == "retrying":
                self._tries[offset] = tries
            else:
                self.done.add(offset)
        self.pending: dict[int, Delivery] = {}
        self.redelivering: dict[int, Delivery] = {}
        self.keys: dict[str, collections.deque[Delivery]] = {}
        self.ready: asyncio.Queue[Delivery] = asyncio.Queue()
        self.running = 0
        self.dirty = True
        self._space = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.clock: Clock = broker.clock
        self._timers: set[Timer] = set()
        self._calls: set[HandlerCall] = set()  # tries running now, watched by _ack_timer
        # Plain def handlers run in threads of the subscriber's own, never in the event loop's
        # default executor: a hung one must not hold back other subscribers or the broker.
        self.threads = (
            None
            if subscription.handler.is_async
            else HandlerThreads(self.name, subscription.config.concurrency)
        )
        self._redelivery_check = asyncio.Event()
        self._redelivery_check.set()
        self._checking_redeliveries = False
        self.stall: Stall | None = None
        """Why the read loop cannot read on (None while it can): see :meth:`health`."""

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._tasks.append(
            asyncio.create_task(self._read_loop(), name=f"localbroker-read-{self.name}")
        )
        self._tasks.append(
            asyncio.create_task(self._redelivery_loop(), name=f"localbroker-dlq-{self.name}")
        )
        self._tasks.append(
            asyncio.create_task(self._ack_timer(), name=f"localbroker-ack-{self.name}")
        )
        for i in range(self.sub.config.concurrency):
            self._tasks.append(
                asyncio.create_task(self._worker(), name=f"localbroker-handler-{self.name}-{i}")
            )

    async def stop(self, thread_timeout: float) -> None:
        """Stop delivering. Deliveries not finished stay in flight and are redelivered on restart.

        Plain ``def`` handlers still running in threads get ``thread_timeout`` seconds to
        return; threads still running then are abandoned with a warning (daemon threads: they
        do not keep the process from exiting).
        """
        self.halt()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self.threads is not None:
            self.threads.shutdown(wait=False, cancel_futures=True)
            running = [asyncio.wrap_future(f) for f in self.threads.running()]
            if running:
                _, hung = await asyncio.wait(running, timeout=thread_timeout)
                if hung:
                    for future in hung:
                        future.cancel()  # stop listening; the thread itself cannot be stopped
                    logger.warning(
                        "subscriber %s: %d plain def handler thread(s) still running %.1f s "
                        "after close began; abandoned (their events are delivered again "
                        "after a restart)",
                        self.name,
                        len(hung),
                        thread_timeout,
                    )

    def halt(self) -> None:
        """Start no more handlers: cancel the tasks and timers (``stop()`` waits for them)."""
        for timer in self._timers:
            timer.cancel()
        for task in self._tasks:
            task.cancel()

    def snapshot(self) -> SubscriberState:
        """The state to persist now."""
        self.state.committed = self._committed()
        self.state.position = self.position
        self.state.done = [o for o in self.done if o >= self.state.committed]
        self.dirty = False
        return self.state

    @property
    def idle(self) -> bool:
        """Nothing read and unfinished, nothing left to read."""
        return (
            not self.pending
            and not self.redelivering
            and not self._redelivery_check.is_set()
            and not self._checking_redeliveries
            and self.running == 0
            and self.position >= self.broker.visible_offset
        )

    @property
    def settled(self) -> bool:
        """Nothing runs, is ready to run or is left to read: only a timer (a retry's backoff)
        can move this subscriber on (``TestBroker.drain`` then moves a fake clock)."""
        return (
            self.running == 0
            and self.ready.empty()
            and not self._redelivery_check.is_set()
            and not self._checking_redeliveries
            and self.position >= self.broker.visible_offset
        )

    def health(self) -> SubscriberHealth:
        """Stalled, lagging (events not handled yet) or ok, as of now."""
        lag = max(0, self.broker.visible_offset - self._committed())
        return SubscriberHealth.of(self.name, self.position, lag, self.stall)

    @property
    def in_flight(self) -> int:
        return len(self.pending) + len(self.redelivering)

    def notify_redelivery(self) -> None:
        """An operator sent DLQ entries back to this subscriber: pick them up."""
        self._redelivery_check.set()

    # -- reading ---------------------------------------------------------------------------

    def _committed(self) -> int:
        return next(iter(self.pending)) if self.pending else self.position

    async def _read_loop(self) -> None:
        broker = self.broker
        while True:
            if len(self.pending) >= self.max_in_flight:
                self._space.clear()
                await self._space.wait()
                continue
            if self.position >= broker.visible_offset:
                await broker.wait_for_append(self.position)
                continue
            limit = min(READ_BATCH, self.max_in_flight - len(self.pending))
            try:
                records = await broker.fetch_log(self.position, limit)
            except Exception as exc:
                if isinstance(exc, LocalBrokerError) and exc.retriable:
                    # E.g. the archive is unreachable: wait, never skip.
                    logger.warning(
                        "subscriber %s cannot read offset %d: %s", self.name, self.position, exc
                    )
                    await asyncio.sleep(READ_RETRY_DELAY)
                else:
                    # Damage in the log (or a disk error): never skip it, never die silently.
                    self._stalled(exc)
                    await asyncio.sleep(STALLED_RETRY_DELAY)
                continue
            if self.stall is not None:
                logger.warning(
                    "subscriber %s reads again at offset %d (it was stalled: %s)",
                    self.name,
                    self.position,
                    self.stall.cause,
                )
                self.stall = None
            for record in records:
                offset = record.offset
                self.position = offset + 1
                if offset in self.done:
                    continue
                try:
                    envelope = decode_envelope(record.payload)
                except SerializationError as exc:
                    # A record that passed its checksum but holds no envelope: dead-letter it
                    # rather than stall the queue or drop it silently.
                    envelope = {
                        "id": f"offset-{offset}",
                        "topic": "?",
                        "data": {},
                        "_bad": str(exc),
                    }
                if not self._matches(envelope["topic"]):
                    continue
                delivery = Delivery(
                    offset=offset,
                    envelope=envelope,
                    key=envelope.get("key"),
                    tries=self._tries.pop(offset, 0),
                    budget=self.max_tries,
                )
                self.pending[offset] = delivery
                self._dispatch(delivery)
            self.dirty = True
            # Hand over to the handlers between batches, so reading ahead never starves them.
            await asyncio.sleep(0)

    def _stalled(self, error: Exception) -> None:
        """The read at :attr:`position` fails: say so once, loudly, and keep the reason."""
        cause = str(error) or repr(error)
        if self.stall is not None and self.stall.cause == cause:
            return  # already reported: the loop retries quietly
        self.stall = Stall(self.position, cause, time.time())
        logger.error(
            "subscriber %s is stalled at offset %d: %s; it delivers nothing after this offset "
            "until the read succeeds (it retries every %.0f s)%s",
            self.name,
            self.position,
            cause,
            STALLED_RETRY_DELAY,
            f"; {REPAIR_HINT}" if isinstance(error, CorruptLogError) else "",
        )
        self.broker._delivery_finished()  # wake wait_idle(), which reports it

    def _dispatch(self, delivery: Delivery) -> None:
        key = delivery.key
        if key is None:
            self.ready.put_nowait(delivery)
        elif key in self.keys:
            self.keys[key].append(delivery)
        else:
            self.keys[key] = collections.deque()
            self.ready.put_nowait(delivery)

    def _release_key(self, delivery: Delivery) -> None:
        key = delivery.key
        if key is None:
            return
        waiting = self.keys.get(key)
        if waiting:
            self.ready.put_nowait(waiting.popleft())
        else:
            self.keys.pop(key, None)

    async def _redelivery_loop(self) -> None:
        while True:
            await self._redelivery_check.wait()
            self._redelivery_check.clear()
            self._checking_redeliveries = True
            try:
                await self._pick_up_redeliveries()
            finally:
                self._checking_redeliveries = False

    async def _pick_up_redeliveries(self) -> None:
        for entry in await self.broker.store.retrying_dlq(self.name):
            if entry.offset in self.redelivering or entry.offset in self.pending:
                continue
            try:
                records = await self.broker.fetch_log(entry.offset, 1)
                if not records or records[0].offset != entry.offset:
                    # A read from a lost offset returns the record after the gap.
                    raise NotFoundError(f"offset {entry.offset} is not in the log (lost)")
            except LocalBrokerError as exc:
                logger.error("DLQ entry %s cannot be redelivered: %s", entry.id, exc)
                continue
            envelope = decode_envelope(records[0].payload)
            delivery = Delivery(
                offset=entry.offset,
                envelope=envelope,
                key=envelope.get("key"),
                tries=entry.tries,
                budget=entry.tries + self.max_tries,
                dlq_id=entry.id,
            )
            self.redelivering[entry.offset] = delivery
            self._dispatch(delivery)

    # -- handling --------------------------------------------------------------------------

    async def _worker(self) -> None:
        task = asyncio.current_task()
        assert task is not None
        while True:
            if task.cancelling():
                # stop() cancelled this task but a handler caught the CancelledError and
                # returned: end here, or stop() would wait for this worker forever.
                raise asyncio.CancelledError
            delivery = await self.ready.get()
            self.running += 1
            try:
                await self._deliver(delivery, task)
            except Exception:
                # The handler's outcome could not be recorded (the state store failed): the
                # delivery stays in flight and is tried again, and this worker goes on.
                logger.exception(
                    "subscriber %s: could not record the outcome of offset %d; "
                    "trying it again in %.0f s",
                    self.name,
                    delivery.offset,
                    READ_RETRY_DELAY,
                )
                self._requeue(delivery, READ_RETRY_DELAY)
            finally:
                self.running -= 1

    async def _ack_timer(self) -> None:
        """Cancel handlers past their ack deadline.

        One watchdog per subscriber instead of a timer per delivery: arming and disarming a
        timer for every event cost more than the rest of the delivery. It wakes ten times per
        ``ack_timeout``, so a timeout fires at most 10% late.
        """
        interval = min(max(self.ack_timeout / 10, 0.005), 0.5)
        clock = self.clock
        while True:
            await clock.sleep(interval)
            now = clock.time()
            for call in list(self._calls):
                if call.deadline <= now and not call.expired:
                    call.expired = True
                    call.task.cancel()

    async def _deliver(self, d: Delivery, task: asyncio.Task[None]) -> None:
        spec = self.sub.handler
        envelope = d.envelope
        attempt = d.tries + 1
        token = enter_handler(envelope["id"], envelope.get("correlation_id"), self.name)
        started = time.perf_counter()
        # A def handler's ack timer starts when a thread takes it up, not while it waits for
        # one (behind a hung handler): waiting must not burn its tries.
        call = HandlerCall(
            task, self.clock.time() + self.ack_timeout if self.threads is None else math.inf
        )
        self._calls.add(call)
        job: Future[None] | None = None
        error: BaseException | None = None
        stops_app = False
        try:
            if "_bad" in envelope:
                raise SerializationError(envelope["_bad"])
            event_class = spec.event_class(envelope["topic"])
            if event_class is None:
                # Only a DLQ entry from before the handler's annotation changed gets here.
                raise SerializationError(
                    f"event {envelope['id']} ({envelope['topic']}) is of no topic the handler "
                    f"takes ({', '.join(c.__name__ for c in spec.event_types)})"
                )
            # Upcast to the version of the class the handler takes (never stored back).
            event = self.broker.registry.to_event(envelope, event_class)
            middleware = self.broker.delivery_middleware
            context: DeliveryContext | None = None
            if spec.wants_context or middleware:
                context = DeliveryContext(
                    subscriber=self.name,
                    offset=d.offset,
                    attempt=attempt,
                    previous_errors=list(d.errors),
                    envelope=envelope,
                    ack_timeout=self.ack_timeout,
                    call=call,
                    clock=self.clock,
                    broker=self.broker,
                )

            async def call_handler(event: Event) -> None:
                nonlocal job
                args = (event, context) if spec.wants_context else (event,)
                if self.threads is None:
                    await spec.call(*args)  # type: ignore[misc]
                    return
                # In a copy of this context, so events the handler publishes join the chain.
                run = contextvars.copy_context().run
                job = self.threads.submit(
                    run, _call_in_thread, self.clock, call, self.ack_timeout, spec.call, args
                )
                await asyncio.wrap_future(job)

            if middleware:
                assert context is not None
                await chain_deliver(middleware, context, call_handler)(event)
            else:
                await call_handler(event)
        except asyncio.CancelledError as exc:
            if task.cancelling() > call.expired:
                raise  # the broker is stopping: the delivery stays in flight
            error = exc  # the ack watchdog's, or the handler's own (a failed try)
        except (SystemExit, KeyboardInterrupt) as exc:
            error, stops_app = exc, True
        except BaseException as exc:  # GeneratorExit and the like too: a failed try
            error = exc
        finally:
            self._calls.discard(call)
            leave_handler(token)
        timed_out = call.expired
        if timed_out:
            task.uncancel()
            if error is None or isinstance(error, asyncio.CancelledError):
                error = TimeoutError(f"handler did not finish within {self.ack_timeout}s")
            if job is not None and job.running():
                logger.warning(
                    "subscriber %s: a plain def handler is still running after ack_timeout "
                    "(event %s); a thread cannot be cancelled, so it holds one of the "
                    "subscriber's %d handler threads until it returns",
                    self.name,
                    envelope["id"],
                    self.sub.config.concurrency,
                )
        elapsed = time.perf_counter() - started
        hist = self.state.handler_hist
        bucket = histogram_bucket(elapsed)
        hist[bucket] = hist.get(bucket, 0) + 1
        if error is None:
            await self._succeeded(d, attempt)
            return
        # A handler's SystemExit stops the application: count the try (so an event that does
        # it every time reaches the DLQ after max_tries runs), but do not run it again here.
        await self._failed(d, attempt, error, timed_out=timed_out, retry=not stops_app)
        if stops_app:
            self.broker._handler_raised_exit(self.name, envelope["id"], error)

    async def _succeeded(self, d: Delivery, attempt: int) -> None:
        if d.tries:
            await self.broker.store.record_success_after_retry(self.name, d.offset, attempt)
        self.state.processed += 1
        self._finish(d)

    async def _failed(
        self, d: Delivery, attempt: int, error: BaseException, *, timed_out: bool, retry: bool
    ) -> None:
        envelope = d.envelope
        if timed_out:
            kind = "timeout"
            error_type, message = "AckTimeout", f"handler did not finish within {self.ack_timeout}s"
            trace = "".join(traceback.format_exception(error))
        else:
            kind = "rejected" if isinstance(error, self._dont_retry) else "error"
            error_type, message = type(error).__name__, str(error)
            trace = "".join(traceback.format_exception(error))
        dead = kind == "rejected" or attempt >= d.budget
        described = f"{error_type}({message!r})"
        logger.warning(
            "Failed %d times, subscriber: %s, error: %s, event: %s (%s)%s",
            attempt,
            self.name,
            described,
            envelope["id"],
            envelope["topic"],
            " -> DLQ" if dead else "",
        )
        try:
            await self.broker.store.record_failure(
                subscriber=self.name,
                offset=d.offset,
                event_id=envelope["id"],
                topic=envelope["topic"],
                correlation_id=envelope.get("correlation_id"),
                attempt=attempt,
                kind=kind,
                error_type=error_type,
                message=message,
                traceback=trace,
                dead=dead,
            )
        except Exception:
            # Without a record of the failure the delivery must stay: retry it later.
            logger.exception("could not record a failed delivery; it will be retried")
            dead = False
        d.tries = attempt
        d.errors.append(described)
        self.state.failures += 1
        if dead:
            self.state.dead += 1
            self._finish(d)
        elif retry:
            self._requeue(d, self.retry.delay(attempt))

    def _requeue(self, d: Delivery, delay: float) -> None:
        """Hand ``d`` to a worker again after ``delay`` seconds (it keeps its key meanwhile)."""
        if delay <= 0:
            self.ready.put_nowait(d)
            return
        handle: Timer

        def requeue() -> None:
            self._timers.discard(handle)
            self.ready.put_nowait(d)

        handle = self.clock.call_later(delay, requeue)
        self._timers.add(handle)

    def _prune_done(self) -> None:
        committed = self._committed()
        self.done = {o for o in self.done if o >= committed}
        # Prune again only once the set has doubled: while a delivery waits at the head (a
        # retry backing off for up to 30 s), everything finished behind it must be kept, and
        # a rebuild per finished delivery made each one cost O(events behind the head). With
        # the doubling, a rebuild of n offsets follows at least n/2 additions: O(1) amortised.
        self._prune_done_at = max(4 * self.max_in_flight, 2 * len(self.done))

    def _finish(self, d: Delivery) -> None:
        if d.dlq_id is not None:
            self.redelivering.pop(d.offset, None)
        else:
            self.pending.pop(d.offset, None)
            self.done.add(d.offset)
            if len(self.done) >= self._prune_done_at:
                self._prune_done()
        self._release_key(d)
        self.dirty = True
        self._space.set()
        self.broker._delivery_finished()


def _call_in_thread(
    clock: Clock,
    call: HandlerCall,
    ack_timeout: float,
    fn: Handler,
    args: tuple[Any, ...],
) -> None:
    """Run a plain def handler in its thread, starting its ack timer now."""
    # Clock.time() is safe from a thread and an attribute assignment is atomic.
    call.deadline = clock.time() + ack_timeout
    fn(*args)

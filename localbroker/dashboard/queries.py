"""What the pages show, gathered from a :class:`~localbroker.view.BrokerView` (no HTTP here)."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import time
from datetime import UTC, datetime
from typing import Any

import orjson

from localbroker.broker.chains import DeliveryState, delivery_states, worst_state
from localbroker.broker.indexer import index_records
from localbroker.broker.subscriber import histogram_quantile
from localbroker.errors import ConfigurationError, NotFoundError, SerializationError
from localbroker.events import decode_envelope
from localbroker.log import CommitLog, Record
from localbroker.schemas import SCHEMA_PREFIX, TopicSchema
from localbroker.state.event_index import EventQuery, IndexedEvent, TopicFlow
from localbroker.state.store import DLQEntry, ErrorRecord
from localbroker.topics import TopicPattern
from localbroker.view import BrokerView, SubscriberInfo

__all__ = [
    "EventDetail",
    "EventPage",
    "EventSchema",
    "SyncRow",
    "ThroughputMeter",
    "TopicStats",
    "event_detail",
    "list_events",
    "parse_time",
    "sync_rows",
    "topic_analytics",
    "topic_stats",
]

SCAN_BUDGET = 50_000
"""Records read from the log per page when the index does not cover the range."""

RANGES = {"1h": 3600.0, "24h": 86400.0, "7d": 7 * 86400.0, "30d": 30 * 86400.0}
"""Time ranges offered by the analytics and chains pages."""


def parse_time(text: str | None) -> float | None:
    """``2026-11-23T09:30`` (UTC unless an offset is given) or epoch seconds; empty: None."""
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigurationError(
            f"time {text!r}: give an ISO date and time (2026-11-23T09:30) or epoch seconds"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


@dataclasses.dataclass(frozen=True, slots=True)
class EventRow:
    """An event in a list, with the worst state of its deliveries."""

    event: IndexedEvent
    state: str
    deliveries: list[DeliveryState]


@dataclasses.dataclass(frozen=True, slots=True)
class EventPage:
    """One page of events, newest first."""

    rows: list[EventRow]
    next_before: int | None
    """``before=`` of the next (older) page; None on the last page."""
    log_start: int
    log_end: int
    indexed_to: int
    """The index covers offsets below this; later ones were read from the log."""


async def list_events(
    view: BrokerView, q: EventQuery, *, before: int | None, limit: int
) -> EventPage:
    """Events matching ``q`` below offset ``before`` (default: the end), newest first.

    The index answers for the offsets it covers. What it has not reached yet (or everything,
    without an index) is read from the log backwards, at most :data:`SCAN_BUDGET` records per
    page: a page with few matches then ends early with a link to scan further.
    """
    await view.refresh()
    log = view.log
    top = log.next_offset if before is None else max(min(before, log.next_offset), log.start_offset)
    indexed_to = log.start_offset
    if view.index is not None:
        indexed_to = min(max(await view.index.next_offset(), log.start_offset), log.next_offset)
    events: list[IndexedEvent] = []
    next_before: int | None = None
    if top > indexed_to:
        events, next_before = await asyncio.to_thread(
            _scan_backwards, log, q, indexed_to, top, limit
        )
        top = indexed_to
    if view.index is not None and len(events) < limit and next_before in (None, indexed_to):
        more = await view.index.query(q, before=top, limit=limit - len(events) + 1)
        next_before = None
        if len(more) > limit - len(events):
            more = more[: limit - len(events)]
            next_before = more[-1].offset
        events.extend(more)
    if next_before is not None and next_before <= log.start_offset:
        next_before = None
    states = await delivery_states(events, view.store)
    rows = [EventRow(e, worst_state(states[e.offset]), states[e.offset]) for e in events]
    return EventPage(rows, next_before, log.start_offset, log.next_offset, indexed_to)


def _scan_backwards(
    log: CommitLog, q: EventQuery, lower: int, upper: int, limit: int
) -> tuple[list[IndexedEvent], int | None]:
    """Matches in ``[lower, upper)`` newest first, and where to go on (None: range exhausted)."""
    found: list[IndexedEvent] = []
    hi, budget = upper, SCAN_BUDGET
    while hi > lower and budget > 0:
        lo = max(lower, hi - 1000)
        records: list[Record] = []
        at = lo
        while at < hi:
            chunk = log.read(at, max_records=hi - at)
            # Across a gap (lost offsets) a read goes on past ``hi``: that is the next window's.
            records.extend(r for r in chunk if r.offset < hi)
            at = chunk[-1].offset + 1
        found.extend(e for e in reversed(index_records(records)) if q.matches(e))
        budget -= hi - lo
        hi = lo
        if len(found) >= limit:
            return found[:limit], found[limit - 1].offset
    return found, (hi if hi > lower else None)


@dataclasses.dataclass(frozen=True, slots=True)
class EventSchema:
    """What the schema registry recorded of an event's topic, for its page."""

    topic: TopicSchema
    version: int
    """The event's stored version."""
    schema_json: str
    """The JSON Schema of that version's payload (empty when none was recorded)."""

    @property
    def newest(self) -> int | None:
        return self.topic.newest

    @property
    def class_name(self) -> str | None:
        recorded = self.topic.versions.get(self.version)
        return recorded.class_name if recorded is not None else None


async def event_schema(view: BrokerView, envelope: dict[str, Any]) -> EventSchema | None:
    """The recorded schema of ``envelope``'s topic at its version (None: nothing recorded)."""
    raw = await view.store.get_value(f"{SCHEMA_PREFIX}{envelope['topic']}")
    if raw is None:
        return None
    topic = TopicSchema.model_validate(raw)
    version = envelope.get("version", 1)
    recorded = topic.versions.get(version)
    schema = recorded.json_schema if recorded is not None else None
    text = orjson.dumps(schema, option=orjson.OPT_INDENT_2).decode() if schema else ""
    return EventSchema(topic, version, text)


@dataclasses.dataclass(frozen=True, slots=True)
class EventDetail:
    """Everything about one event: envelope, payload, and where it stands with each subscriber."""

    offset: int
    timestamp: float
    envelope: dict[str, Any] | None
    envelope_json: str
    payload_json: str
    deliveries: list[DeliveryState]
    updated: dict[str, float]
    """Per subscriber: when its delivery state last changed (deliveries that failed a try)."""
    errors: dict[str, list[ErrorRecord]]
    dlq: dict[str, DLQEntry]
    schema: EventSchema | None = None
    """The topic's documentation and the schema of the event's version, when recorded."""

    @property
    def state(self) -> str:
        return worst_state(self.deliveries)


async def event_detail(view: BrokerView, offset: int) -> EventDetail:
    """The event at ``offset`` (NotFoundError when not in the log)."""
    await view.refresh()
    if offset >= view.log.next_offset:
        raise NotFoundError(f"no event at offset {offset} (the log ends at {view.log.next_offset})")
    record = view.log.get(offset)
    indexed = index_records([record])[0]
    try:
        envelope: dict[str, Any] | None = decode_envelope(record.payload)
    except SerializationError:
        envelope = None
    if envelope is None:
        envelope_json = record.payload.decode("utf-8", "replace")
        payload_json = ""
    else:
        meta = {k: v for k, v in envelope.items() if k != "data"}
        envelope_json = orjson.dumps(meta, option=orjson.OPT_INDENT_2).decode()
        payload_json = orjson.dumps(envelope.get("data"), option=orjson.OPT_INDENT_2).decode()
    states = (await delivery_states([indexed], view.store))[offset]
    rows = await view.store.deliveries_for([offset])
    errors: dict[str, list[ErrorRecord]] = collections.defaultdict(list)
    for error in sorted(await view.store.errors(offset=offset, limit=10_000), key=lambda e: e.id):
        errors[error.subscriber].append(error)
    dlq = {sub: entry for (sub, _), entry in (await view.store.dlq_for([offset])).items()}
    return EventDetail(
        offset=offset,
        timestamp=record.timestamp / 1000,
        envelope=envelope,
        envelope_json=envelope_json,
        payload_json=payload_json,
        deliveries=states,
        updated={sub: row["updated"] for (sub, _), row in rows.items()},
        errors=dict(errors),
        dlq=dlq,
        schema=await event_schema(view, envelope) if envelope is not None else None,
    )


@dataclasses.dataclass(frozen=True, slots=True)
class TopicStats:
    """Events of a topic in a window, and how many failed or were dead-lettered."""

    topic: str
    events: int
    failed: int
    dead: int
    causes: list[TopicFlow]
    """Flows into this topic (which topics' handlers published it)."""
    effects: list[TopicFlow]
    """Flows out of this topic (what its handlers published)."""

    @property
    def failure_rate(self) -> float:
        """Share of events that failed at least one try for some subscriber."""
        return self.failed / self.events if self.events else 0.0


async def window_start(view: BrokerView, range_name: str) -> tuple[float, int]:
    """``(since, first offset)`` of a time range named in :data:`RANGES` (or ``all``)."""
    if range_name == "all" or view.index is None:
        return 0.0, view.log.start_offset
    if range_name not in RANGES:
        raise ConfigurationError(f"range {range_name!r}: one of {', '.join(RANGES)} or all")
    since = time.time() - RANGES[range_name]
    first = await view.index.first_offset_since(since)
    return since, view.log.next_offset if first is None else first


async def topic_stats(view: BrokerView, *, from_offset: int) -> list[TopicStats]:
    """Per topic: events, failures, and the causation flows in and out (needs the index)."""
    if view.index is None:
        return []
    counts = await view.index.topic_counts(from_offset=from_offset)
    flows = await view.index.flows(from_offset=from_offset)
    failed = await view.store.failed_events(from_offset=from_offset)
    return [
        TopicStats(
            topic=topic,
            events=n,
            failed=failed.get(topic, (0, 0))[0],
            dead=failed.get(topic, (0, 0))[1],
            causes=[f for f in flows if f.effect == topic],
            effects=[f for f in flows if f.cause == topic],
        )
        for topic, n in counts.items()
    ]


@dataclasses.dataclass(frozen=True, slots=True)
class TopicAnalytics:
    """Counts over time, tries and handler times of one topic."""

    topic: str
    over_time: list[tuple[str, float]]
    tries: list[tuple[str, float]]
    """``(tries, deliveries)``: how many tries deliveries of this topic took."""
    handler_times: dict[str, list[tuple[str, float]]]
    """Per subscriber of the topic: its handler-time histogram (all its topics)."""
    quantiles: dict[str, tuple[float | None, float | None]]


async def topic_analytics(
    view: BrokerView, topic: str, *, since: float, from_offset: int, buckets: int = 60
) -> TopicAnalytics:
    """Analytics of ``topic`` since ``since`` (needs the index for counts)."""
    assert view.index is not None
    now = time.time()
    start = since or (await _first_time(view)) or now - 3600
    width = max((now - start) / buckets, 1.0)
    counts = await view.index.counts_over_time(topic, since=start, bucket_seconds=width)
    fmt = "%H:%M" if now - start <= 86400 else "%m-%d %H:%M"
    over_time = [
        (datetime.fromtimestamp(start + i * width, UTC).strftime(fmt), float(counts.get(i, 0)))
        for i in range(buckets)
    ]
    tries: collections.Counter[int] = collections.Counter()
    failed_by_sub: collections.Counter[str] = collections.Counter()
    for name, _, n, _, count in await view.store.delivery_counts(
        topic=topic, from_offset=from_offset
    ):
        tries[n] += count
        failed_by_sub[name] += count
    handler_times: dict[str, list[tuple[str, float]]] = {}
    quantiles: dict[str, tuple[float | None, float | None]] = {}
    for sub in await view.store.subscribers():
        if not any(TopicPattern(p).matches(topic) for p in sub.patterns):
            continue
        delivered = await view.index.count(
            topic, from_offset=max(from_offset, sub.start_offset), to_offset=sub.committed
        )
        tries[1] += max(0, delivered - failed_by_sub[sub.name])
        handler_times[sub.name] = [
            (_duration(2 ** ((int(b) + 0.5) / 4) / 1e6), float(n))
            for b, n in sorted(sub.handler_hist.items(), key=lambda kv: int(kv[0]))
        ]
        quantiles[sub.name] = (
            histogram_quantile(sub.handler_hist, 0.5),
            histogram_quantile(sub.handler_hist, 0.99),
        )
    return TopicAnalytics(
        topic=topic,
        over_time=over_time,
        tries=[(f"{n} tries" if n > 1 else "1 try", float(tries[n])) for n in sorted(tries)],
        handler_times=handler_times,
        quantiles=quantiles,
    )


async def _first_time(view: BrokerView) -> float | None:
    assert view.index is not None
    first = await view.index.query(EventQuery(), before=view.log.start_offset + 1, limit=1)
    return first[0].time if first else None


def _duration(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


TIME_KEYS = ("updated", "last_upload")
"""Status fields holding seconds since the epoch (besides those ending in ``_at``)."""


def _shown(key: str, value: Any) -> str:
    """A stored status value as words: times formatted (UTC), yes/no, "-" for nothing."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float) and (key.endswith("_at") or key in TIME_KEYS):
        return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    if isinstance(value, float):
        return f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, list):
        return ", ".join(_shown(key, v) for v in value) or "-"
    if isinstance(value, dict):
        return "; ".join(f"{k}: {_shown(k, v)}" for k, v in value.items()) or "-"
    return str(value)


@dataclasses.dataclass(frozen=True)
class SyncRow:
    """One sync target as the System page shows it."""

    name: str
    state: str
    """``connected``, ``disconnected``, ``stopped`` (its broker closed it) or ``stale`` (not
    rewritten within the bound: its broker is gone or hung, so what it says is old)."""
    age: float | None
    """Seconds since the status was written."""
    fields: list[tuple[str, str]]
    """The rest of the status, formatted."""


def sync_rows(
    statuses: dict[str, dict[str, Any]], *, stale_after: float, now: float | None = None
) -> list[SyncRow]:
    """The statuses sync targets persisted, judged by their age (see :class:`SyncRow`)."""
    now = time.time() if now is None else now
    rows = []
    for name, status in sorted(statuses.items()):
        updated = status.get("updated")
        age = now - updated if isinstance(updated, int | float) else None
        if not status.get("running", True):
            state = "stopped"
        elif age is None or age > stale_after:
            state = "stale"
        else:
            state = "connected" if status.get("connected") else "disconnected"
        hidden = {"name", "connected", "running"}
        fields = [(k, _shown(k, v)) for k, v in status.items() if k not in hidden]
        rows.append(SyncRow(name, state, age, fields))
    return rows


class ThroughputMeter:
    """Events per second each subscriber processed, from samples of its ``processed`` counter."""

    def __init__(self, window: float = 30.0) -> None:
        self.window = window
        self._samples: dict[str, collections.deque[tuple[float, int]]] = {}

    def update(
        self, subscribers: list[SubscriberInfo], now: float | None = None
    ) -> dict[str, float | None]:
        """Record a sample of each subscriber; its rate over the window (None: too few samples)."""
        now = time.monotonic() if now is None else now
        rates: dict[str, float | None] = {}
        for sub in subscribers:
            samples = self._samples.setdefault(sub.name, collections.deque())
            samples.append((now, sub.processed))
            while len(samples) > 2 and now - samples[1][0] >= self.window:
                samples.popleft()
            t0, p0 = samples[0]
            rates[sub.name] = (sub.processed - p0) / (now - t0) if now - t0 >= 1.0 else None
        return rates

"""Event chains: every event caused, directly or not, by one command."""

from __future__ import annotations

import asyncio
import dataclasses
from concurrent.futures import Executor
from datetime import UTC, datetime

import aiosqlite

from localbroker.broker.indexer import index_records
from localbroker.errors import NotFoundError
from localbroker.log import CommitLog
from localbroker.state.event_index import EventIndex, IndexedEvent
from localbroker.state.store import DLQEntry, StateStore, SubscriberState
from localbroker.topics import TopicPattern

__all__ = ["Chain", "ChainNode", "DeliveryState", "build_chain", "delivery_states", "worst_state"]


@dataclasses.dataclass(frozen=True, slots=True)
class DeliveryState:
    """Where one event stands with one subscriber."""

    subscriber: str
    state: str
    """``done``, ``pending`` (not handled yet), ``retrying``, ``dlq`` or ``discarded``."""
    tries: int
    last_error: str | None = None


def worst_state(deliveries: list[DeliveryState]) -> str:
    """The worst of the states of an event's deliveries (dlq > retrying > pending > done)."""
    order = ("dlq", "retrying", "pending", "discarded", "done")
    states = {d.state for d in deliveries}
    return next((s for s in order if s in states), "done")


@dataclasses.dataclass(slots=True)
class ChainNode:
    """An event in a chain, with its deliveries and the events its handlers published."""

    event: IndexedEvent
    deliveries: list[DeliveryState]
    children: list[ChainNode] = dataclasses.field(default_factory=list)

    @property
    def state(self) -> str:
        """The worst delivery state of this event (dlq > retrying > pending > done)."""
        return worst_state(self.deliveries)


@dataclasses.dataclass(slots=True)
class Chain:
    """The tree of a chain: roots are events whose cause is outside the chain (the command)."""

    correlation_id: str
    roots: list[ChainNode]
    nodes: dict[str, ChainNode]

    def __len__(self) -> int:
        return len(self.nodes)

    def walk(self) -> list[tuple[int, ChainNode]]:
        """``(depth, node)`` of every node, depth first, in log order."""
        out: list[tuple[int, ChainNode]] = []

        def visit(node: ChainNode, depth: int) -> None:
            out.append((depth, node))
            for child in node.children:
                visit(child, depth + 1)

        for root in self.roots:
            visit(root, 0)
        return out

    def render(self) -> str:
        """The chain as an indented text tree."""
        lines = []
        for depth, node in self.walk():
            e = node.event
            when = datetime.fromtimestamp(e.time, UTC).strftime("%H:%M:%S.%f")[:-3]
            lines.append(f"{'  ' * depth}{e.topic}  {e.id}  @{e.offset}  {when}")
            for d in node.deliveries:
                error = f"  last error: {d.last_error}" if d.last_error else ""
                lines.append(f"{'  ' * depth}  - {d.subscriber}: {d.state}, tries {d.tries}{error}")
        return "\n".join(lines)


async def delivery_states(
    events: list[IndexedEvent], store: StateStore
) -> dict[int, list[DeliveryState]]:
    """For each event (by offset), its state with every subscriber whose patterns match it."""
    subscribers = await store.subscribers()
    patterns = {s.name: [TopicPattern(p) for p in s.patterns] for s in subscribers}
    offsets = [e.offset for e in events]
    rows = await store.deliveries_for(offsets)
    dlq = await store.dlq_for(offsets)
    result: dict[int, list[DeliveryState]] = {}
    for event in events:
        states = []
        for sub in subscribers:
            if event.offset < sub.start_offset or not any(
                p.matches(event.topic) for p in patterns[sub.name]
            ):
                continue
            states.append(
                _state(
                    sub,
                    event.offset,
                    rows.get((sub.name, event.offset)),
                    dlq.get((sub.name, event.offset)),
                )
            )
        result[event.offset] = states
    return result


def _state(
    sub: SubscriberState, offset: int, row: aiosqlite.Row | None, dlq_entry: DLQEntry | None
) -> DeliveryState:
    tries = int(row["tries"]) if row is not None else 0
    last_error = row["last_error"] if row is not None else None
    if dlq_entry is not None:
        state = {"dead": "dlq", "retrying": "retrying", "discarded": "discarded"}.get(
            dlq_entry.status
        )
        if state is not None:
            return DeliveryState(sub.name, state, tries, last_error)
    if row is not None and row["status"] == "retrying":
        return DeliveryState(sub.name, "retrying", tries, last_error)
    if sub.is_done(offset) or (row is not None and row["status"] == "done"):
        return DeliveryState(sub.name, "done", max(tries, 1), last_error)
    return DeliveryState(sub.name, "pending", tries, last_error)


async def build_chain(
    correlation_id: str,
    *,
    store: StateStore,
    index: EventIndex | None,
    log: CommitLog,
    executor: Executor | None = None,
) -> Chain:
    """The chain of ``correlation_id`` from the index, plus any events the index has not seen yet.

    The log is scanned in ``executor`` (default: the event loop's).
    """
    events: list[IndexedEvent] = []
    scan_from = log.start_offset
    if index is not None:
        # The index end first: rows the indexer commits between the two queries are then
        # scanned from the log too (and dropped as duplicates), never missed.
        scan_from = max(scan_from, await index.next_offset())
        events = await index.chain(correlation_id)
    seen = {e.offset for e in events}
    events.extend(
        e
        for e in await asyncio.get_running_loop().run_in_executor(
            executor, _scan, log, scan_from, correlation_id
        )
        if e.offset not in seen
    )
    if not events:
        raise NotFoundError(f"no events with correlation id {correlation_id!r}")
    states = await delivery_states(events, store)
    nodes = {e.id: ChainNode(e, states[e.offset]) for e in events}
    roots = []
    for node in nodes.values():
        parent = nodes.get(node.event.causation_id or "")
        if parent is not None and parent is not node:
            parent.children.append(node)
        else:
            roots.append(node)
    return Chain(correlation_id, roots, nodes)


def _scan(log: CommitLog, start: int, correlation_id: str) -> list[IndexedEvent]:
    found = []
    offset = start
    while offset < log.next_offset:
        records = log.read(offset, max_records=5000)
        if not records:
            break
        for row in index_records(records):
            if row.correlation_id == correlation_id or row.id == correlation_id:
                found.append(row)
        offset = records[-1].offset + 1
    return found

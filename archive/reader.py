"""The batch-analytics reader: events straight from the archive, no broker, no local directory."""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from localbroker.errors import ConfigurationError, SerializationError
from localbroker.events import Event, decode_envelope
from localbroker.log import scan_segment
from localbroker.log.segment import log_path_for
from localbroker.registry import EventRegistry
from localbroker.topics import TopicPattern

from .config import S3Location
from .manifest import Manifest
from .objects import ArchiveObjects
from .store import ObjectStore, open_store

__all__ = ["ArchiveReader", "ArchivedEvent", "read"]


@dataclasses.dataclass(frozen=True, slots=True)
class ArchivedEvent:
    """One archived event: its log offset, append time and envelope (``data`` is the payload).

    ``envelope`` and ``payload`` are as stored; :meth:`to_event` upcasts (with the registry
    the reader was given, e.g. ``broker.registry``) to the version of the class asked for.
    """

    offset: int
    timestamp: int
    """Append time, milliseconds since the epoch."""
    envelope: dict[str, Any]
    registry: EventRegistry = dataclasses.field(
        default_factory=EventRegistry, repr=False, compare=False
    )
    """Event classes and upcasters used by :meth:`to_event`."""

    @property
    def topic(self) -> str:
        return str(self.envelope["topic"])

    @property
    def payload(self) -> dict[str, Any]:
        """The event's own fields."""
        data: dict[str, Any] = self.envelope.get("data") or {}
        return data

    def to_event(self, cls: type[Event] | None = None) -> Event:
        """The event as ``cls`` (default: the newest class of its topic in the registry, else
        a GenericEvent), upcast to that class's version.

        Raises :class:`~localbroker.errors.SerializationError` naming the event when it cannot
        be upcast (no upcaster on the way) or does not fit the class.
        """
        return self.registry.to_event(self.envelope, cls)

    def to_dict(self) -> dict[str, Any]:
        """The envelope with the offset and append time added (for JSON lines, tables)."""
        return {"offset": self.offset, "appended_at": self.timestamp, **self.envelope}


def _millis(value: datetime | float | int | None, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ConfigurationError(f"{name} must be timezone-aware (e.g. datetime.now(UTC))")
        return int(value.timestamp() * 1000)
    if isinstance(value, int | float):
        return int(value * 1000)
    raise ConfigurationError(f"{name} must be a datetime or seconds since the epoch")


class ArchiveReader:
    """Reads events of an archive, downloading only the segments whose manifest overlaps.

    Example::

        reader = ArchiveReader(S3Location(bucket="events", prefix="shop"), registry=broker.registry)
        for event in reader.events(topics=["order.*"], since=datetime(2026, 1, 1, tzinfo=UTC)):
            print(event.offset, event.payload)
            order = event.to_event(OrderPlaced)     # stored v1 events upcast to OrderPlaced's version

    ``store`` replaces the store the location names (its ``prefix`` still applies).
    ``registry``: the event classes and upcasters :meth:`ArchivedEvent.to_event` uses
    (``broker.registry``, a router's ``registry``, or one of your own).
    """

    def __init__(
        self,
        location: S3Location,
        store: ObjectStore | None = None,
        *,
        registry: EventRegistry | None = None,
    ) -> None:
        self.objects = ArchiveObjects(store or open_store(location), location.prefix)
        self.registry = registry if registry is not None else EventRegistry()

    def manifests(
        self,
        topics: Iterable[str] | None = None,
        since: datetime | float | None = None,
        until: datetime | float | None = None,
    ) -> list[Manifest]:
        """The manifests of the segments that may hold matching events, by offset."""
        patterns = _patterns(topics)
        since_ms, until_ms = _millis(since, "since"), _millis(until, "until")
        return [
            m
            for m in self.objects.list_manifests()
            if m.overlaps(since_ms, until_ms)
            and (patterns is None or any(p.matches(t) for p in patterns for t in m.topics))
        ]

    def events(
        self,
        topics: Iterable[str] | None = None,
        since: datetime | float | None = None,
        until: datetime | float | None = None,
        *,
        manifests: list[Manifest] | None = None,
    ) -> Iterator[ArchivedEvent]:
        """Events of ``topics`` (exact or patterns; None = all) appended in ``[since, until)``.

        In offset order. Each segment is downloaded once (to a temporary file) and its
        SHA-256 checked before any of its events is yielded:
        :class:`~localbroker.archive.ArchiveChecksumError` otherwise.
        """
        patterns = _patterns(topics)
        since_ms, until_ms = _millis(since, "since"), _millis(until, "until")
        if manifests is None:
            manifests = self.manifests(topics, since, until)
        matched: dict[str, bool] = {}
        with tempfile.TemporaryDirectory(prefix="localbroker-archive-") as tmp:
            for manifest in manifests:
                path = log_path_for(Path(tmp), manifest.base_offset)
                self.objects.download(manifest, path)
                try:
                    for record in scan_segment(path):
                        if (since_ms is not None and record.timestamp < since_ms) or (
                            until_ms is not None and record.timestamp >= until_ms
                        ):
                            continue
                        try:
                            envelope = decode_envelope(record.payload)
                        except SerializationError:
                            continue  # not an event (the broker dead-letters such records)
                        topic = envelope["topic"]
                        hit = matched.get(topic)
                        if hit is None:
                            hit = matched[topic] = patterns is None or any(
                                p.matches(topic) for p in patterns
                            )
                        if hit:
                            yield ArchivedEvent(
                                record.offset, record.timestamp, envelope, self.registry
                            )
                finally:
                    path.unlink(missing_ok=True)


def _patterns(topics: Iterable[str] | None) -> list[TopicPattern] | None:
    if topics is None:
        return None
    if isinstance(topics, str):
        topics = [topics]
    return [TopicPattern(t) for t in topics]


def read(
    *,
    bucket: str | None = None,
    directory: str | Path | None = None,
    prefix: str = "localbroker",
    topics: Iterable[str] | None = None,
    since: datetime | float | None = None,
    until: datetime | float | None = None,
    endpoint_url: str | None = None,
    region: str | None = None,
    registry: EventRegistry | None = None,
) -> Iterator[ArchivedEvent]:
    """Iterate archived events from the archive alone (no broker, no data directory): in the
    S3 ``bucket``, or the local ``directory``.

    ``topics``: exact topics or patterns (``order.*``); ``since`` / ``until``: append time,
    aware datetimes or epoch seconds, ``since`` included, ``until`` excluded. Only segments
    whose manifest overlaps the request are downloaded. ``registry`` (``broker.registry``):
    the classes and upcasters ``event.to_event()`` uses to read older versions.

    Example::

        from localbroker.archive import read

        for event in read(bucket="events", prefix="shop", topics=["order.placed"],
                          since=datetime(2026, 11, 1, tzinfo=UTC)):
            total += event.to_event(OrderPlaced).amount
    """
    location = S3Location(
        bucket=bucket,
        directory=directory,
        prefix=prefix,
        endpoint_url=endpoint_url,
        region=region,
    )
    return ArchiveReader(location, registry=registry).events(topics, since, until)

"""Manifests: what one archived segment holds, written next to it once it is verified.

Key layout under the archive's prefix (``%020d`` is the segment's base offset, like the local
file names)::

    PREFIX/segments/00000000000000004711.log        the segment file, byte for byte
    PREFIX/manifests/00000000000000004711.json      its manifest (this model, as JSON)

A segment counts as archived only when its manifest exists; the manifest is written after the
uploaded segment's checksum was verified, so a reader never sees a partial segment.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import orjson
from pydantic import BaseModel, ConfigDict

from localbroker.errors import SerializationError
from localbroker.events import decode_envelope
from localbroker.log import scan_segment
from localbroker.log.segment import parse_base_offset

__all__ = [
    "MANIFEST_VERSION",
    "Manifest",
    "build_manifest",
    "file_digests",
    "manifest_key",
    "segment_key",
]

MANIFEST_VERSION = 1


def segment_key(prefix: str, base_offset: int) -> str:
    """Key of the segment object starting at ``base_offset``."""
    return f"{prefix}/segments/{base_offset:020d}.log"


def manifest_key(prefix: str, base_offset: int) -> str:
    """Key of the manifest of the segment starting at ``base_offset``."""
    return f"{prefix}/manifests/{base_offset:020d}.json"


class Manifest(BaseModel):
    """One archived segment: its offsets, time range, topics, size and SHA-256."""

    model_config = ConfigDict(frozen=True)

    version: int = MANIFEST_VERSION
    base_offset: int
    next_offset: int
    """Offset after the segment's last record."""
    record_count: int
    first_timestamp: int | None
    """Append time of the segment's first record: the timestamp of its record header, in
    milliseconds since the epoch (None for an empty segment). Not the event's own ``time``."""
    last_timestamp: int | None
    """Append time of the segment's last record (read from this segment's file, never from
    the next one). Records appended together share a millisecond, so when a batch straddles a
    roll this equals the next segment's ``first_timestamp``, as it should."""
    topics: list[str]
    """Every topic present, sorted."""
    size_bytes: int
    sha256: str
    """Hex SHA-256 of the whole segment file."""
    key: str
    """The segment object's key."""
    uploaded_at: float = 0.0
    """Seconds since the epoch when the upload was verified."""

    def overlaps(
        self, since_ms: int | None, until_ms: int | None, topics: set[str] | None = None
    ) -> bool:
        """Whether records in ``[since_ms, until_ms)`` of one of ``topics`` may be inside."""
        if self.record_count == 0:
            return False
        if since_ms is not None and (self.last_timestamp or 0) < since_ms:
            return False
        if until_ms is not None and (self.first_timestamp or 0) >= until_ms:
            return False
        return topics is None or not topics.isdisjoint(self.topics)

    def to_json(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json"), option=orjson.OPT_INDENT_2)


def file_digests(path: Path, part_size: int) -> tuple[str, list[bytes]]:
    """Hex SHA-256 of a file and the SHA-256 digests of its ``part_size`` parts (one pass)."""
    whole = hashlib.sha256()
    parts: list[bytes] = []
    with path.open("rb") as f:
        while chunk := f.read(part_size):
            whole.update(chunk)
            parts.append(hashlib.sha256(chunk).digest())
    return whole.hexdigest(), parts


def build_manifest(path: Path, prefix: str, sha256: str) -> Manifest:
    """Scan a sealed segment file (checking every record's CRC) and describe it.

    Blocking: run it in a thread. Raises :class:`~localbroker.errors.CorruptLogError` for a bad
    record, so that a damaged segment is never archived as if it were good.
    """
    base = next_offset = first_ts = last_ts = None
    count = 0
    topics: set[str] = set()
    for record in scan_segment(path):
        if base is None:
            base, first_ts = record.offset, record.timestamp
        next_offset, last_ts = record.offset + 1, record.timestamp
        count += 1
        try:
            topics.add(decode_envelope(record.payload)["topic"])
        except SerializationError:
            topics.add("?")  # as the broker's indexer names a record without an envelope
    named = parse_base_offset(path.name)
    base_offset = named if named is not None else (base or 0)
    return Manifest(
        base_offset=base_offset,
        next_offset=next_offset if next_offset is not None else base_offset,
        record_count=count,
        first_timestamp=first_ts,
        last_timestamp=last_ts,
        topics=sorted(topics),
        size_bytes=path.stat().st_size,
        sha256=sha256,
        key=segment_key(prefix, base_offset),
    )

"""Gaps: ranges of offsets that hold no record (docs/log-format.md, "Gaps").

Offsets once handed out are never handed out again. When records are lost (damage cut out
by ``localbroker repair``, acknowledged records missing after a crash, positions of
subscribers beyond the end of the log), their offsets become a *gap*: the log goes on after
them, in a new segment whose base offset is the gap's end. ``gaps.jsonl`` lists every gap
(one JSON object a line), so that readers and ``verify`` can tell a recorded gap from a
missing segment file, and operators can see what was lost and why.

The file is small and rewritten whole (``.tmp``, fsync, rename) on every change.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson

from localbroker.errors import CorruptLogError
from localbroker.log.files import write_durably

__all__ = [
    "GAPS_FILE",
    "QUARANTINE_DIR",
    "Gap",
    "add_gaps",
    "gap_start",
    "make_gap",
    "quarantine",
    "read_gaps",
    "reserved_end",
]

GAPS_FILE = "gaps.jsonl"
#: Subdirectory of the log directory that keeps damaged bytes cut out of segments.
QUARANTINE_DIR = "quarantine"


@dataclass(frozen=True, slots=True)
class Gap:
    """Offsets ``first`` to ``end - 1`` hold no record: they were lost, and are never reused."""

    first: int
    end: int
    #: What happened, naming the file and byte position of the damage when there was one.
    reason: str
    #: Seconds since the epoch when the gap was recorded.
    time: float
    #: Where the damaged bytes were kept, relative to the log directory (None: no bytes).
    quarantine: str | None = None

    def describe(self) -> str:
        """``offsets 992..1143 (152)`` for messages."""
        return f"offsets {self.first}..{self.end - 1} ({self.end - self.first})"


def read_gaps(directory: Path) -> list[Gap]:
    """The gaps recorded for a log directory, by first offset (empty when there is no file)."""
    path = directory / GAPS_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    gaps: list[Gap] = []
    for number, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            gaps.append(Gap(**orjson.loads(line)))
        except (orjson.JSONDecodeError, TypeError) as exc:
            # Written whole and renamed into place: a bad line is damage, not a torn write.
            raise CorruptLogError(path, 0, f"line {number} is not a gap: {exc}") from None
    return sorted(gaps, key=lambda g: g.first)


def add_gaps(directory: Path, new: Iterable[Gap]) -> list[Gap]:
    """Record ``new`` gaps durably (a gap already recorded is not added twice); return all."""
    gaps = read_gaps(directory)
    known = {(g.first, g.end) for g in gaps}
    added = [g for g in new if g.end > g.first and (g.first, g.end) not in known]
    if not added:
        return gaps
    gaps = sorted([*gaps, *added], key=lambda g: g.first)
    write_durably(directory / GAPS_FILE, b"".join(orjson.dumps(asdict(g)) + b"\n" for g in gaps))
    return gaps


def make_gap(first: int, end: int, reason: str, quarantine: str | None = None) -> Gap:
    """A gap recorded now."""
    return Gap(first, end, reason, time.time(), quarantine)


def gap_start(gaps: list[Gap], offset: int) -> int:
    """Where the run of gaps that ends at ``offset`` starts (``offset`` itself when none does).

    A segment followed by a gap ends where the gap starts, not at the next segment's base.
    """
    start = offset
    for gap in reversed(gaps):
        if gap.end == start:
            start = gap.first
    return start


def reserved_end(gaps: list[Gap]) -> int:
    """The offset the log must go on from at least: the end of the last gap (0 when none)."""
    return max((g.end for g in gaps), default=0)


def quarantine(directory: Path, segment: Path, start: int, end: int) -> str:
    """Copy bytes ``start`` to ``end`` of ``segment`` to a file of their own, durably.

    Returns its path relative to the log directory. Done before the bytes are cut out of the
    segment, so a crash in between loses nothing.
    """
    with segment.open("rb") as f:
        f.seek(start)
        data = f.read(end - start)
    name = f"{QUARANTINE_DIR}/{segment.name}.{start}-{end}"
    (directory / QUARANTINE_DIR).mkdir(exist_ok=True)
    write_durably(directory / name, data)
    return name

"""The sparse offset index of one segment (docs/log-format.md, "Index files").

An index file is a run of 8-byte big-endian entries ``(u32 relative_offset, u32 position)``.
It is a cache: it is never fsynced on its own, it may be short or stale after a crash, and it
can always be rebuilt from the ``.log`` file. In memory the entries live in two
``array('I')`` columns so that a lookup is one :func:`bisect.bisect_right` on native ints.
"""

from __future__ import annotations

import contextlib
import operator
import os
import struct
import sys
from array import array
from bisect import bisect_right
from itertools import islice
from pathlib import Path

__all__ = ["ENTRY", "ENTRY_SIZE", "OffsetIndex"]

ENTRY = struct.Struct(">II")
ENTRY_SIZE = ENTRY.size  # 8

_NEEDS_SWAP = sys.byteorder == "little"


def _to_disk(values: array[int]) -> bytes:
    """Interleaved native u32 values as big-endian bytes."""
    if _NEEDS_SWAP:
        values = array("I", values)
        values.byteswap()
    return values.tobytes()


class OffsetIndex:
    """Entries ``(relative offset, position)`` of one segment, in memory and (optionally) on disk.

    Entries are strictly increasing in both columns. :meth:`lookup` answers "where do I start
    scanning for offset X": the last entry at or before X.
    """

    __slots__ = ("_fd", "path", "positions", "relative_offsets")

    def __init__(self, path: Path) -> None:
        self.path = path
        self.relative_offsets: array[int] = array("I")
        self.positions: array[int] = array("I")
        self._fd: int | None = None

    def __len__(self) -> int:
        return len(self.relative_offsets)

    # -- loading ------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: Path, log_size: int) -> tuple[OffsetIndex, bool]:
        """Read ``path`` and keep the leading entries that are plausible for a log of ``log_size``.

        Returns the index and whether the file was entirely usable (false when it was missing,
        had a torn entry, was not increasing or pointed past the end of the log; the caller then
        knows that the entries it got back are only a prefix and must be completed by a scan).
        Whether each entry points at the right record is not checked here: that needs the log
        (see :meth:`Segment.check_index_entry`).
        """
        index = cls(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return index, False
        whole = len(data) - len(data) % ENTRY_SIZE
        values = array("I")
        values.frombytes(data[:whole])
        if _NEEDS_SWAP:
            values.byteswap()
        rel = values[0::2]
        pos = values[1::2]
        # Keep the longest increasing prefix that lies inside the log. The common case (a good
        # index) is checked with two C-speed comparisons instead of a Python loop.
        keep = len(rel)
        if keep and not (pos[-1] < log_size and _increasing(rel) and _increasing(pos)):
            keep = 0
            last_rel, last_pos = -1, -1
            for r, p in zip(rel, pos, strict=True):
                if r <= last_rel or p <= last_pos or p >= log_size:
                    break
                last_rel, last_pos = r, p
                keep += 1
        index.relative_offsets = rel[:keep]
        index.positions = pos[:keep]
        return index, keep == len(rel) and whole == len(data)

    # -- queries ------------------------------------------------------------------------------

    def lookup(self, relative_offset: int) -> tuple[int, int]:
        """The last entry ``(relative offset, position)`` at or before ``relative_offset``.

        ``(0, 0)`` (the segment's first record) when there is none.
        """
        i = bisect_right(self.relative_offsets, relative_offset) - 1
        if i < 0:
            return 0, 0
        return self.relative_offsets[i], self.positions[i]

    def last(self) -> tuple[int, int] | None:
        """The last entry, or None when the index is empty."""
        if not self.relative_offsets:
            return None
        return self.relative_offsets[-1], self.positions[-1]

    def count_at_or_before(self, position: int) -> int:
        """How many entries point at or before byte ``position``."""
        return bisect_right(self.positions, position)

    # -- changes ------------------------------------------------------------------------------

    def add(self, relative_offset: int, position: int) -> None:
        """Append one entry in memory (the caller keeps entries increasing)."""
        self.relative_offsets.append(relative_offset)
        self.positions.append(position)

    def extend(self, entries: array[int], *, to_file: bool = True) -> None:
        """Append interleaved ``rel, pos, rel, pos, ...`` entries in memory (and file if open).

        ``to_file=False``: in memory only (entries another process already wrote).
        """
        self.relative_offsets.extend(entries[0::2])
        self.positions.extend(entries[1::2])
        if to_file and self._fd is not None:
            _write_all(self._fd, _to_disk(entries))

    def truncate(self, count: int) -> None:
        """Keep only the first ``count`` entries (in memory)."""
        del self.relative_offsets[count:]
        del self.positions[count:]

    def truncate_file(self, count: int) -> None:
        """Cut the index file after ``count`` entries (a missing file stays missing)."""
        with contextlib.suppress(FileNotFoundError):
            os.truncate(self.path, count * ENTRY_SIZE)

    def to_bytes(self) -> bytes:
        """All entries in their on-disk form."""
        values = array("I", bytes(8 * len(self.relative_offsets)))
        values[0::2] = self.relative_offsets
        values[1::2] = self.positions
        return _to_disk(values)

    # -- files --------------------------------------------------------------------------------

    def write_file(self) -> None:
        """Replace the index file with the in-memory entries (write ``.tmp``, rename)."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_bytes(self.to_bytes())
        os.replace(tmp, self.path)

    def open_for_append(self) -> None:
        """Open the file so that :meth:`extend` also writes the new entries to disk.

        The file must already hold exactly the in-memory entries (see :meth:`write_file`).
        """
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    @property
    def appending(self) -> bool:
        """Whether :meth:`open_for_append` was called (and :meth:`close` not since)."""
        return self._fd is not None

    def sync(self) -> None:
        """fsync the file if it is open for appending."""
        if self._fd is not None:
            os.fsync(self._fd)

    def close(self) -> None:
        """Close the file (the in-memory entries stay usable)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


def _increasing(values: array[int]) -> bool:
    # map(operator.lt, ...) walks both columns in C: ~30 ns per entry, no Python loop.
    return all(map(operator.lt, values, islice(values, 1, None)))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]

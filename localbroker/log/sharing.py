"""Sharing one log directory between processes (docs/log-format.md, "Several writers").

Three small files next to the segments:

* ``append.lock``: taken exclusively (``flock``) for the time one batch is appended (or the
  log rolled, a gap recorded, segments deleted). The kernel releases it when its holder dies.
* ``writer.lock``: held *shared* by every process that has the log open for writing. An
  opener that can take it exclusively is alone: it runs the full recovery scan, then holds it
  shared like the others. ``localbroker repair`` (and anything else that needs the directory
  to itself) takes it exclusively, and is refused while a broker runs.
* ``tail``: the shared tail state, two CRC'd slots so that a torn write of one leaves the
  other valid. It names the end of the published records and the durable point; a writer
  updates it before it releases ``append.lock``. Bytes past the published end were written
  by a process that died mid-batch: the next writer cuts them.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from localbroker.log.checkpoint import Checkpoint

__all__ = [
    "APPEND_LOCK_FILE",
    "MEMBERS_LOCK_FILE",
    "TAIL_FILE",
    "FileLock",
    "TailFile",
    "TailState",
    "current_boot",
    "read_tail",
]

APPEND_LOCK_FILE = "append.lock"
MEMBERS_LOCK_FILE = "writer.lock"
TAIL_FILE = "tail"

# seq, boot, end (base, position, next offset), reserved, durable (base, position, next offset)
_BODY = struct.Struct(">QQQQQQQQQ")
_SLOT = _BODY.size + 4
# The second slot starts on its own 64-byte line, away from the first.
_SLOT_AT = (0, 128)


@dataclass(frozen=True, slots=True)
class TailState:
    """What the writers have published: the end of the log and its durable point.

    ``end`` is where the last published record of the active segment ends (segment base,
    byte position, next offset); ``reserved`` is the offset the next append starts at at least
    (the end of the last gap); ``durable`` is a checkpoint (every byte before it is fsynced).
    ``seq`` grows by one with every update; ``boot`` identifies the boot of the machine that
    wrote it (see :func:`current_boot`).
    """

    seq: int
    boot: int
    end: Checkpoint
    reserved: int
    durable: Checkpoint

    @property
    def fresh(self) -> bool:
        """Written since the machine booted: its page-cache view of the files still holds.

        After a reboot the files may hold fsynced records past a tail that was never
        fsynced itself: recovery then trusts the checkpoint and the records, not the tail.
        """
        return self.boot != 0 and self.boot == current_boot()

    def encode(self) -> bytes:
        """The on-disk form of one slot (CRC last)."""
        body = _BODY.pack(
            self.seq,
            self.boot,
            self.end.segment_base,
            self.end.position,
            self.end.next_offset,
            self.reserved,
            self.durable.segment_base,
            self.durable.position,
            self.durable.next_offset,
        )
        return body + struct.pack(">I", zlib.crc32(body))


def _decode(data: bytes) -> TailState | None:
    if len(data) < _SLOT:
        return None
    body = data[: _BODY.size]
    if struct.unpack(">I", data[_BODY.size : _SLOT])[0] != zlib.crc32(body):
        return None
    seq, boot, eb, ep, en, reserved, db, dp, dn = _BODY.unpack(body)
    if seq == 0:
        return None
    return TailState(seq, boot, Checkpoint(eb, ep, en), reserved, Checkpoint(db, dp, dn))


def _newest(data: bytes) -> TailState | None:
    states = [_decode(data[at : at + _SLOT]) for at in _SLOT_AT]
    valid = [s for s in states if s is not None]
    return max(valid, key=lambda s: s.seq) if valid else None


@functools.cache  # it cannot change while the process runs
def current_boot() -> int:
    """64 bits of the Linux boot id (0 where there is none: the tail is then never fresh)."""
    try:
        text = Path("/proc/sys/kernel/random/boot_id").read_text()
        return int(text.strip().replace("-", "")[:16], 16)
    except (OSError, ValueError):
        return 0


def read_tail(directory: Path) -> TailState | None:
    """The published tail state of a log directory, or None (no file, or no valid slot)."""
    try:
        data = (directory / TAIL_FILE).read_bytes()
    except FileNotFoundError:
        return None
    return _newest(data)


class TailFile:
    """The ``tail`` file, kept open: read before and written after each batch."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / TAIL_FILE
        self._fd: int | None = None

    def _open(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        return self._fd

    def read(self) -> TailState | None:
        """The newest valid slot (None when the file is new or both slots are bad)."""
        return _newest(os.pread(self._open(), _SLOT_AT[1] + _SLOT, 0))

    def write(self, state: TailState) -> None:
        """Write ``state`` into the slot its ``seq`` selects (the other keeps the previous one).

        The caller holds ``append.lock``. Not fsynced: it describes files in the page cache,
        and after a power cut recovery does not rely on it (see :meth:`CommitLog.open`).
        """
        os.pwrite(self._open(), state.encode(), _SLOT_AT[state.seq % 2])

    def close(self) -> None:
        """Close the descriptor (the file stays)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


class FileLock:
    """An ``flock`` on a file of the log directory, shared or exclusive.

    ``filelock`` only takes exclusive locks; the members lock needs shared ones too, and
    downgrading from exclusive to shared in place.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def _open(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        return self._fd

    def acquire(self, *, shared: bool = False, blocking: bool = True) -> bool:
        """Take (or convert to) the lock; False when ``blocking=False`` and it is held."""
        flags = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        if not blocking:
            flags |= fcntl.LOCK_NB
        fd = self._open()
        try:
            fcntl.flock(fd, flags)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return False
            raise
        return True

    def release(self) -> None:
        """Release the lock and close the file (the kernel does the same for a dead process)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the only descriptor drops the flock

    def unlock(self) -> None:
        """Release the lock, keeping the file open for the next :meth:`acquire`."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

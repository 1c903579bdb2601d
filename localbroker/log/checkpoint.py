"""The checkpoint of a log directory (docs/log-format.md, "Checkpoint").

28 bytes: ``u32 crc`` (CRC-32 of the next 24 bytes), ``u64 segment base offset``, ``u64 byte
position in that segment``, ``u64 next offset``. Every byte before that position was fsynced.

The writer rewrites it in place (one ``pwrite`` into a descriptor it keeps open) after every
fsync of the log, so it names exactly what was made durable: a killed process leaves it in the
page cache, where the next open finds it. It is not fsynced itself: after a power cut it may be
older than the log (never newer, as it is written only after the fsync it describes), which
recovery tolerates (see :mod:`localbroker.log.recovery`).
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CHECKPOINT_FILE", "Checkpoint", "CheckpointFile", "read_checkpoint"]

logger = logging.getLogger("localbroker.log")

CHECKPOINT_FILE = "checkpoint"
_CHECKPOINT = struct.Struct(">IQQQ")
_CHECKPOINT_BODY = struct.Struct(">QQQ")


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Recovery point: every byte before ``position`` of segment ``segment_base`` was fsynced."""

    segment_base: int
    position: int
    next_offset: int

    def encode(self) -> bytes:
        """The 28-byte on-disk form (CRC first)."""
        body = _CHECKPOINT_BODY.pack(self.segment_base, self.position, self.next_offset)
        return struct.pack(">I", zlib.crc32(body)) + body


def read_checkpoint(directory: Path) -> Checkpoint | None:
    """The checkpoint of a log directory, or None when it is missing or unreadable."""
    path = directory / CHECKPOINT_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    if len(data) != _CHECKPOINT.size:
        logger.warning("%s: ignoring checkpoint of %d bytes (expected 28)", path, len(data))
        return None
    crc, base, position, next_offset = _CHECKPOINT.unpack(data)
    if zlib.crc32(data[4:]) != crc:
        logger.warning("%s: ignoring checkpoint with a bad checksum", path)
        return None
    return Checkpoint(base, position, next_offset)


class CheckpointFile:
    """The writer's checkpoint file, kept open and overwritten in place.

    A 28-byte ``pwrite`` at offset 0 costs a few microseconds and needs no free space once
    the file exists, so it can follow every fsync, on a full disk too.
    """

    def __init__(self, directory: Path) -> None:
        self.path = directory / CHECKPOINT_FILE
        self._fd: int | None = None

    def store(self, checkpoint: Checkpoint) -> None:
        """Overwrite the checkpoint (opening, and cutting to 28 bytes, the first time)."""
        if self._fd is None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                os.ftruncate(fd, _CHECKPOINT.size)
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd
        os.pwrite(self._fd, checkpoint.encode(), 0)

    def close(self) -> None:
        """Close the descriptor (the file stays)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

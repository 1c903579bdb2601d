"""File system helpers shared by the commit log and the archive's directory store."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["fsync_dir"]


def fsync_dir(directory: Path) -> None:
    """Make the entries of ``directory`` durable: a file created, renamed or deleted in it.

    fsync of a file flushes its data, not its name: until its directory is fsynced too, a
    power cut can undo the rename that put a fully written file in place.
    """
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

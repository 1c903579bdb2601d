"""Serving deleted offsets from the archive: a bounded cache of downloaded segments.

Each downloaded segment lives in its own directory of the cache (``CACHE/<base>/<base>.log``)
and is opened as a read-only single-segment :class:`~localbroker.log.CommitLog`, so reads use
the log's own index and checks, and replay costs one GET per segment, not per record.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import shutil
from pathlib import Path

from localbroker.errors import NotFoundError
from localbroker.log import CommitLog, Record
from localbroker.log.segment import log_path_for

from .errors import ArchiveError
from .manifest import Manifest
from .objects import ArchiveObjects
from .tiering import Tiering

__all__ = ["ArchiveColdReader", "SegmentCache"]

logger = logging.getLogger("localbroker.archive")


class SegmentCache:
    """Downloaded segments on local disk, at most ``max_bytes`` of them (LRU).

    The segment being read is never evicted, even when it alone exceeds ``max_bytes``. What
    a previous run left in ``directory`` is removed: the cache only serves this run's replays.
    """

    def __init__(self, directory: Path, objects: ArchiveObjects, max_bytes: int) -> None:
        if directory.is_dir():
            for entry in directory.iterdir():
                if len(entry.name) == 20 and entry.name.isdigit():  # only our segment dirs
                    shutil.rmtree(entry, ignore_errors=True)
        self.directory = directory
        self.objects = objects
        self.max_bytes = max_bytes
        self._logs: collections.OrderedDict[int, CommitLog] = collections.OrderedDict()
        self._sizes: dict[int, int] = {}
        self._lock = asyncio.Lock()
        self.downloads = 0
        """Segments downloaded since start (for status and tests)."""

    async def open(self, manifest: Manifest) -> CommitLog:
        """The segment of ``manifest`` as a read-only log, downloading (and checking) it if needed."""
        base = manifest.base_offset
        async with self._lock:
            log = self._logs.get(base)
            if log is not None:
                self._logs.move_to_end(base)
                return log
            log = await asyncio.to_thread(self._load, manifest)
            self._logs[base] = log
            self._sizes[base] = manifest.size_bytes
            self._evict(keep=base)
            return log

    def _load(self, manifest: Manifest) -> CommitLog:
        directory = self.directory / f"{manifest.base_offset:020d}"
        path = log_path_for(directory, manifest.base_offset)
        directory.mkdir(parents=True, exist_ok=True)
        self.objects.download(manifest, path)  # appears only once its SHA-256 matched
        self.downloads += 1
        log = CommitLog(directory, readonly=True).open()
        if log.next_offset != manifest.next_offset or log.start_offset != manifest.base_offset:
            log.close()
            shutil.rmtree(directory, ignore_errors=True)
            raise ArchiveError(
                f"{manifest.key} holds offsets {log.start_offset}..{log.next_offset}, its "
                f"manifest says {manifest.base_offset}..{manifest.next_offset}"
            )
        return log

    def _evict(self, keep: int) -> None:
        while sum(self._sizes.values()) > self.max_bytes and len(self._logs) > 1:
            base = next(iter(self._logs))
            if base == keep:
                self._logs.move_to_end(base)
                continue
            self._logs.pop(base).close()
            self._sizes.pop(base)
            shutil.rmtree(self.directory / f"{base:020d}", ignore_errors=True)

    def close(self) -> None:
        """Close the open segments (the files stay for the next start)."""
        for log in self._logs.values():
            with contextlib.suppress(Exception):
                log.close()
        self._logs.clear()
        self._sizes.clear()


class ArchiveColdReader:
    """The broker's :class:`~localbroker.ColdReader` over the archive's manifests."""

    def __init__(self, tiering: Tiering, cache: SegmentCache) -> None:
        self.tiering = tiering
        self.cache = cache

    def first_offset(self) -> int | None:
        """The first archived offset."""
        return self.tiering.first_offset()

    async def read(self, offset: int, max_records: int) -> list[Record]:
        """Records from the archived segment holding ``offset`` (at most to its end)."""
        manifest = self.tiering.manifest_for(offset)
        if manifest is None:
            if not self.tiering.loaded:
                await self.tiering.load()  # S3 was unreachable at start
                manifest = self.tiering.manifest_for(offset)
            if manifest is None:
                raise NotFoundError(f"offset {offset} is neither in the local log nor archived")
        try:
            log = await self.cache.open(manifest)
        except ArchiveError as exc:
            logger.error("cannot read offset %d from the archive: %s", offset, exc)
            await self.tiering.record_error(exc)
            raise
        return log.read(offset, max_records=max_records)

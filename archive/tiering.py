"""Tiering: upload sealed segments, then let retention delete local copies that are archived.

:class:`Tiering` works on a :class:`~localbroker.log.CommitLog` and the broker's
:class:`~localbroker.state.store.StateStore`, so the ``Archive`` extension (inside a broker) and
``localbroker archive run`` (beside or without one) share it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from bisect import bisect_right
from pathlib import Path

from pydantic import BaseModel

from localbroker.errors import BrokerStateError, LogLockedError
from localbroker.log import CommitLog, SegmentInfo
from localbroker.state.store import StateStore
from localbroker.view import BrokerView

from .config import ArchiveConfig, RetentionPolicy
from .errors import ArchiveError
from .manifest import Manifest
from .objects import ArchiveObjects
from .store import ObjectStore, open_store

__all__ = ["STATE_KEY", "ArchiveState", "Tiering", "archive_now", "local_status"]

logger = logging.getLogger("localbroker.archive")

#: Key of :class:`ArchiveState` in the state store's key/value table.
STATE_KEY = "archive"


class ArchiveState(BaseModel):
    """What the archive last knew, kept in ``state.db`` for ``localbroker archive status``."""

    location: str = ""
    archived_segments: int = 0
    archived_bytes: int = 0
    first_offset: int | None = None
    """First archived offset (None when nothing is archived)."""
    archived_until: int = 0
    """Next offset after the last archived segment."""
    last_upload: float | None = None
    """Seconds since the epoch of the last verified upload."""
    last_error: str | None = None
    last_error_at: float | None = None


class Tiering:
    """Uploads a log's sealed segments in order and applies retention to archived ones.

    ``manifests`` (by base offset) is what the archive holds, loaded by :meth:`load`.
    """

    def __init__(
        self,
        log: CommitLog,
        objects: ArchiveObjects,
        *,
        store: StateStore | None = None,
        retention: RetentionPolicy | None = None,
    ) -> None:
        self.log = log
        self.objects = objects
        self.store = store
        self.retention = retention or RetentionPolicy()
        self.manifests: list[Manifest] = []
        self._bases: list[int] = []
        self.loaded = False
        self.state = ArchiveState(location=objects.describe())

    # -- what the archive holds ----------------------------------------------------------------

    async def load(self) -> None:
        """Read the manifests and remove what interrupted uploads left behind."""
        manifests = await asyncio.to_thread(self.objects.list_manifests)
        await asyncio.to_thread(self.objects.abort_stale_uploads)
        self.manifests = manifests
        self._bases = [m.base_offset for m in manifests]
        self.loaded = True
        await self._save()

    def manifest_for(self, offset: int) -> Manifest | None:
        """The archived segment holding ``offset``, if any."""
        i = bisect_right(self._bases, offset) - 1
        if i >= 0 and offset < self.manifests[i].next_offset:
            return self.manifests[i]
        return None

    def first_offset(self) -> int | None:
        """The first archived offset, None when nothing is archived."""
        return self.manifests[0].base_offset if self.manifests else None

    def is_archived(self, segment: SegmentInfo) -> bool:
        """Whether this exact segment (same offsets and size) has a verified copy archived."""
        i = bisect_right(self._bases, segment.base_offset) - 1
        if i < 0 or self._bases[i] != segment.base_offset:
            return False
        m = self.manifests[i]
        return m.next_offset == segment.next_offset and m.size_bytes == segment.size_bytes

    def pending(self) -> list[SegmentInfo]:
        """Sealed local segments not archived yet, oldest first."""
        return [s for s in self.log.segments() if s.sealed and not self.is_archived(s)]

    # -- upload ---------------------------------------------------------------------------------

    async def upload_pending(self) -> list[Manifest]:
        """Upload every pending segment, oldest first; return the new manifests.

        Stops at the first failure (recorded as ``last_error`` and raised): what was not
        uploaded stays local and pending.
        """
        if not self.loaded:
            await self.load()
        done: list[Manifest] = []
        for segment in self.pending():
            try:
                manifest = await asyncio.to_thread(self.objects.upload_segment, segment.path)
            except ArchiveError as exc:
                await self.record_error(exc)
                self.loaded = False  # next time: list again and abort what the failure left
                raise
            self._add(manifest)
            done.append(manifest)
            self.state.last_upload = manifest.uploaded_at
            self.state.last_error = None
            await self._save()
            logger.info(
                "archived segment %d..%d (%d bytes) as %s",
                manifest.base_offset,
                manifest.next_offset,
                manifest.size_bytes,
                manifest.key,
            )
        return done

    def _add(self, manifest: Manifest) -> None:
        i = bisect_right(self._bases, manifest.base_offset)
        if i > 0 and self._bases[i - 1] == manifest.base_offset:
            self.manifests[i - 1] = manifest
            return
        self.manifests.insert(i, manifest)
        self._bases.insert(i, manifest.base_offset)

    # -- retention ------------------------------------------------------------------------------

    def retention_cutoff(self, now: float | None = None) -> int:
        """Offset below which local segments may be deleted: archived and over a limit.

        Walks the sealed segments oldest first and stops at the first one that is not
        archived or not over a limit, so retention never leaves a hole nor deletes the only
        copy.
        """
        policy = self.retention
        if policy.max_age is None and policy.max_bytes is None:
            return self.log.start_offset
        now = time.time() if now is None else now
        segments = self.log.segments()
        total = sum(s.size_bytes for s in segments)
        cutoff = self.log.start_offset
        for seg in segments:
            if not seg.sealed or not self.is_archived(seg):
                break
            too_old = (
                policy.max_age is not None
                and seg.last_timestamp is not None
                and seg.last_timestamp / 1000 < now - policy.max_age
            )
            too_big = policy.max_bytes is not None and total > policy.max_bytes
            if not (too_old or too_big):
                break
            total -= seg.size_bytes
            cutoff = seg.next_offset
        return cutoff

    def apply_retention(self, now: float | None = None) -> list[SegmentInfo]:
        """Delete the local segments below :meth:`retention_cutoff` (needs a writable log).

        Runs in the thread that owns the log (the event loop), like the broker's reads.
        """
        cutoff = self.retention_cutoff(now)
        if cutoff <= self.log.start_offset:
            return []
        deleted = self.log.delete_segments_before(cutoff)
        for seg in deleted:
            logger.info("retention deleted local segment %s (archived)", seg.path.name)
        return deleted

    # -- state ----------------------------------------------------------------------------------

    async def record_error(self, exc: BaseException) -> None:
        """Remember a failure for ``archive status``."""
        self.state.last_error = str(exc)
        self.state.last_error_at = time.time()
        await self._save()

    async def _save(self) -> None:
        state = self.state
        state.archived_segments = len(self.manifests)
        state.archived_bytes = sum(m.size_bytes for m in self.manifests)
        state.first_offset = self.first_offset()
        state.archived_until = self.manifests[-1].next_offset if self.manifests else 0
        if self.store is not None and not self.store.readonly:
            await self.store.set_value(STATE_KEY, state.model_dump(mode="json"))


async def archive_now(
    data_dir: Path, config: ArchiveConfig, store: ObjectStore | None = None
) -> tuple[list[Manifest], list[SegmentInfo]]:
    """Upload the pending sealed segments of a data directory no broker runs on, then apply
    retention; return the new manifests and the deleted segments (``localbroker archive run``).
    ``store`` defaults to the one ``config`` names.

    Raises :class:`BrokerStateError` when a broker runs on the directory: its own archive
    uploads within ``upload_interval``.
    """
    if store is None:
        # First: a missing extra or location is the error to report, before the directory's.
        store = await asyncio.to_thread(open_store, config)
    log = CommitLog(data_dir / "log", exclusive=True)  # no broker may run meanwhile
    try:
        await asyncio.to_thread(log.open)
    except LogLockedError:
        raise BrokerStateError(
            f"a broker runs on {data_dir}: its Archive extension uploads by itself "
            "(every upload_interval); stop it to archive from the command line"
        ) from None
    try:
        state = await StateStore.open(data_dir / "state.db")
        try:
            objects = ArchiveObjects(store, config.prefix)
            await asyncio.to_thread(objects.check)
            tiering = Tiering(log, objects, store=state, retention=config.retention)
            uploaded = await tiering.upload_pending()
            return uploaded, tiering.apply_retention()
        finally:
            await state.close()
    finally:
        await asyncio.to_thread(log.close)


class LocalStatus(BaseModel):
    """``localbroker archive status``: the local segments against what was archived."""

    archive: ArchiveState | None
    """What the broker's archive last recorded (None: the directory was never archived)."""
    local_segments: int
    local_bytes: int
    local_start_offset: int
    pending_segments: int
    """Sealed local segments not archived yet."""
    pending_bytes: int


async def local_status(data_dir: Path) -> LocalStatus:
    """Archive status of a data directory, from local files only (no S3 access needed)."""
    async with BrokerView(data_dir) as view:
        raw = await view.store.get_value(STATE_KEY)
        segments = view.log.segments()
        start = view.log.start_offset
    state = ArchiveState.model_validate(raw) if raw is not None else None
    until = state.archived_until if state is not None else 0
    pending = [s for s in segments if s.sealed and s.next_offset > until]
    return LocalStatus(
        archive=state,
        local_segments=len(segments),
        local_bytes=sum(s.size_bytes for s in segments),
        local_start_offset=start,
        pending_segments=len(pending),
        pending_bytes=sum(s.size_bytes for s in pending),
    )

"""The ``Archive`` broker extension: background tiering, retention and replay from the archive."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from localbroker.errors import ArchiveError, BrokerStateError
from localbroker.log import SegmentInfo

from .cold import ArchiveColdReader, SegmentCache
from .config import ArchiveConfig, load_archive_config
from .errors import ArchiveUnavailableError
from .manifest import Manifest
from .objects import ArchiveObjects
from .store import ObjectStore, open_store
from .tiering import ArchiveState, Tiering

if TYPE_CHECKING:
    from localbroker.broker.broker import Broker

__all__ = ["Archive"]

logger = logging.getLogger("localbroker.archive")


class Archive:
    """Tier a broker's sealed segments to S3 (or a directory), apply retention, serve deleted
    offsets back.

    Example::

        broker = Broker(
            "./data",
            extensions=[Archive(bucket="events", prefix="shop",
                                retention=RetentionPolicy(max_age=7 * 86400))],
        )

    Options are those of :class:`ArchiveConfig` (keywords or ``config=``), completed from
    ``LOCALBROKER_ARCHIVE_*`` variables; ``store=`` gives the object store directly (a
    :class:`~localbroker.archive.LocalStore`, or one of your own), instead of the bucket or
    directory of the options. On start, wrong credentials or a missing bucket or directory
    raise :class:`~localbroker.archive.ArchiveAccessError`; an unreachable store only logs a
    warning: segments stay local and uploads (and retention) wait until it is back. Uploads run
    in threads and never block ``publish``.
    """

    def __init__(
        self,
        config: ArchiveConfig | None = None,
        *,
        store: ObjectStore | None = None,
        **options: Any,
    ) -> None:
        self.config = (
            config
            if config is not None
            else load_archive_config(need_location=store is None, **options)
        )
        self.store = store
        self._broker: Broker | None = None
        self._tiering: Tiering | None = None
        self._cache: SegmentCache | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._run_lock: asyncio.Lock | None = None

    @property
    def tiering(self) -> Tiering:
        """The uploader and retention of the running broker."""
        if self._tiering is None:
            raise BrokerStateError("the archive is not started (start the broker first)")
        return self._tiering

    async def start(self, broker: Broker) -> None:
        """Check access to the bucket, load the manifests, start the background loop."""
        cfg = self.config
        store = self.store
        if store is None:
            store = await asyncio.to_thread(open_store, cfg)
        objects = ArchiveObjects(store, cfg.prefix)
        self._tiering = tiering = Tiering(
            broker.log, objects, store=broker.store, retention=cfg.retention
        )
        try:
            await asyncio.to_thread(objects.check)
            await tiering.load()
        except ArchiveUnavailableError as exc:
            logger.warning("archive unreachable at start, segments stay local for now: %s", exc)
            await tiering.record_error(exc)
        self._broker = broker
        self._run_lock = asyncio.Lock()
        cache_dir = cfg.cache_dir or broker.data_dir / "archive-cache"
        self._cache = SegmentCache(cache_dir, objects, cfg.cache_bytes)
        broker.cold_reader = ArchiveColdReader(tiering, self._cache)
        self._task = asyncio.create_task(self._loop(), name="localbroker-archive")

    async def close(self) -> None:
        """Stop the background loop (an upload in progress finishes in its thread)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._cache is not None:
            self._cache.close()
        if self._broker is not None and self._broker.cold_reader is not None:
            self._broker.cold_reader = None

    async def _loop(self) -> None:
        while True:
            try:
                await self.run_once()
            except ArchiveError as exc:
                # Recorded as last_error; segments stay local and the next round tries again.
                logger.warning("archive round failed, will retry: %s", exc)
            except Exception:
                logger.exception("archive round failed unexpectedly, will retry")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.upload_interval):
                    await self._wake.wait()
            self._wake.clear()

    def wake(self) -> None:
        """Look for sealed segments now instead of at the next interval."""
        self._wake.set()

    async def run_once(self) -> tuple[list[Manifest], list[SegmentInfo]]:
        """Upload every pending sealed segment, then apply retention; return both lists.

        Raises :class:`~localbroker.errors.ArchiveError` if an upload fails (what was uploaded
        before it counts; retention only considers archived segments).
        """
        tiering = self.tiering
        assert self._run_lock is not None
        async with self._run_lock:
            uploaded = await tiering.upload_pending()
            deleted = tiering.apply_retention()
        return uploaded, deleted

    def status(self) -> ArchiveState:
        """The archive's counters and last error as known now."""
        return self.tiering.state.model_copy()

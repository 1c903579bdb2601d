"""Tier sealed segments to S3 or a directory, apply retention, replay from the archive, read it
for analytics.

Inside a broker::

    from localbroker import Broker
    from localbroker.archive import Archive, RetentionPolicy

    broker = Broker("./data", extensions=[
        Archive(bucket="events", prefix="shop", retention=RetentionPolicy(max_bytes=10 * 2**30)),
    ])

From a data job, with no broker::

    from localbroker.archive import read

    for event in read(bucket="events", prefix="shop", topics=["order.*"]):
        print(event.offset, event.topic, event.payload)

An archive in S3 needs the ``s3`` extra (boto3): ``pip install 'localbroker[s3]'``; without
it, using a bucket (or :class:`S3Store`) raises :class:`~localbroker.MissingExtraError`. An
archive in a local directory (``directory=...``, :class:`LocalStore`) needs no extra.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from localbroker.extras import require_extra

from .config import (
    ArchiveConfig,
    RetentionPolicy,
    S3Location,
    load_archive_config,
)
from .errors import (
    ArchiveAccessError,
    ArchiveChecksumError,
    ArchiveError,
    ArchiveUnavailableError,
)
from .extension import Archive
from .manifest import Manifest, manifest_key, segment_key
from .reader import ArchivedEvent, ArchiveReader, read
from .store import LocalStore, ObjectStore, open_store
from .tiering import ArchiveState, LocalStatus, Tiering, archive_now, local_status

if TYPE_CHECKING:
    from .s3 import S3Store

__all__ = [
    "Archive",
    "ArchiveAccessError",
    "ArchiveChecksumError",
    "ArchiveConfig",
    "ArchiveError",
    "ArchiveReader",
    "ArchiveState",
    "ArchiveUnavailableError",
    "ArchivedEvent",
    "LocalStatus",
    "LocalStore",
    "Manifest",
    "ObjectStore",
    "RetentionPolicy",
    "S3Location",
    "S3Store",
    "Tiering",
    "archive_now",
    "load_archive_config",
    "local_status",
    "manifest_key",
    "open_store",
    "read",
    "segment_key",
]


def __getattr__(name: str) -> Any:
    if name != "S3Store":
        raise AttributeError(f"module 'localbroker.archive' has no attribute {name!r}")
    require_extra("localbroker.archive.S3Store", "s3", "boto3")
    from .s3 import S3Store

    return S3Store

"""Tier sealed segments to S3, apply retention, replay from the archive, read it for analytics.

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

Needs the ``s3`` extra (boto3): ``pip install 'localbroker[s3]'``; without it, importing
this package raises :class:`~localbroker.MissingExtraError`.
"""

from localbroker.extras import require_extra

require_extra("localbroker.archive", "s3", "boto3")

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
from .tiering import ArchiveState, LocalStatus, Tiering, archive_now, local_status

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
    "Manifest",
    "RetentionPolicy",
    "S3Location",
    "Tiering",
    "archive_now",
    "load_archive_config",
    "local_status",
    "manifest_key",
    "read",
    "segment_key",
]

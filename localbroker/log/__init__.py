"""The segmented, append-only commit log.

The on-disk format is documented in ``docs/log-format.md``; :class:`CommitLog` is the entry
point, :func:`verify` checks a directory offline and :func:`scan_segment` reads a single
segment file on its own.
"""

from localbroker.log.commit_log import (
    Checkpoint,
    CommitLog,
    SegmentInfo,
    VerifyReport,
    read_checkpoint,
    scan_segment,
    verify,
)
from localbroker.log.record import HEADER_SIZE, Record, decode_record, encode_record

__all__ = [
    "HEADER_SIZE",
    "Checkpoint",
    "CommitLog",
    "Record",
    "SegmentInfo",
    "VerifyReport",
    "decode_record",
    "encode_record",
    "read_checkpoint",
    "scan_segment",
    "verify",
]

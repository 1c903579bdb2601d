"""The segmented, append-only commit log.

The on-disk format is documented in ``docs/log-format.md``. :class:`CommitLog` is the entry
point; :mod:`~localbroker.log.recovery` decides what to trust on open;
:func:`verify` checks a directory offline and :func:`scan_segment` reads a single segment file
on its own; a :class:`Gap` is a range of offsets lost to damage or a crash.
"""

from localbroker.log.checkpoint import Checkpoint, read_checkpoint
from localbroker.log.commit_log import CommitLog, SegmentInfo
from localbroker.log.gaps import Gap
from localbroker.log.record import HEADER_SIZE, Record, decode_record, encode_record
from localbroker.log.verification import VerifyReport, scan_segment, verify

__all__ = [
    "HEADER_SIZE",
    "Checkpoint",
    "CommitLog",
    "Gap",
    "Record",
    "SegmentInfo",
    "VerifyReport",
    "decode_record",
    "encode_record",
    "read_checkpoint",
    "scan_segment",
    "verify",
]

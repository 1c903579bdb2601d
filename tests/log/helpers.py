"""Record builders and readers shared by the commit log tests."""

from __future__ import annotations

from pathlib import Path

from localbroker.log import CommitLog

TS = 1_700_000_000_000


def payload(i: int, size: int = 40) -> bytes:
    """A recognisable payload for record ``i``."""
    head = f'{{"i": {i}, "pad": "'.encode()
    return head + b"x" * max(0, size - len(head) - 2) + b'"}'


def batch(start: int, count: int, size: int = 40) -> list[tuple[int, bytes]]:
    """``count`` records numbered from ``start``; timestamp TS + number."""
    return [(TS + i, payload(i, size)) for i in range(start, start + count)]


def read_all(log: CommitLog, start: int | None = None) -> list[tuple[int, int, bytes]]:
    """Every record from ``start`` (default: the log start) as plain tuples."""
    offset = log.start_offset if start is None else start
    out = []
    while True:
        records = log.read(offset, max_records=37)
        if not records:
            return out
        out.extend(tuple(r) for r in records)
        offset = records[-1].offset + 1


def crash(log: CommitLog) -> None:
    """Drop a log's descriptors and lock like a killed process would: no sync, no checkpoint."""
    log._release()
    log._is_open = False


def power_cut(log_dir: Path) -> None:
    """What a reboot leaves of the shared tail state: nothing to trust (it is never fsynced).

    Bytes written past the published end by hand then stand for records that reached the
    disk before the power went, which recovery checks from the checkpoint on, as it always
    did. (With a tail from this boot, they would be a dead writer's unpublished batch: cut.)
    """
    (log_dir / "tail").unlink(missing_ok=True)

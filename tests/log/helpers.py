"""Record builders and readers shared by the commit log tests."""

from __future__ import annotations

from pathlib import Path

from localbroker.log import CommitLog, Record, verify

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


def dense_records(log_dir: Path, *, readonly: bool = False) -> list[Record]:
    """Every record of a log that ``verify`` finds clean, asserting dense offsets from 0.

    ``readonly=False`` opens it as a writer would (a dead writer's unpublished batch is cut
    first); read-only, it is read as found.
    """
    assert verify(log_dir).ok
    with CommitLog(log_dir, readonly=readonly) as log:
        records: list[Record] = []
        offset = 0
        while batch := log.read(offset, 10_000):
            records.extend(batch)
            offset = batch[-1].offset + 1
        end = log.next_offset
    assert [r.offset for r in records] == list(range(end)), "offsets are not dense"
    return records


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

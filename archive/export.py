"""Writing archived events out: JSON lines, or Parquet through pyarrow (extra ``parquet``)."""

from __future__ import annotations

import contextlib
import enum
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import orjson

from localbroker.extras import require_extra

from .reader import ArchivedEvent

__all__ = ["ExportFormat", "export_to_file", "replaced_on_success", "write_jsonl", "write_parquet"]

#: Envelope fields that become their own Parquet columns (``headers`` and ``data`` are JSON).
_COLUMNS = ("id", "topic", "time", "key", "version", "correlation_id", "causation_id")
_BATCH = 10_000


class ExportFormat(enum.StrEnum):
    """Output format of ``localbroker export``."""

    JSONL = "jsonl"
    """One JSON object per line: the envelope plus ``offset`` and ``appended_at`` (ms)."""
    PARQUET = "parquet"
    """A Parquet table, one row per event; ``headers`` and ``data`` as JSON strings."""


def write_jsonl(events: Iterable[ArchivedEvent], out: IO[bytes]) -> int:
    """Write one JSON line per event; return how many were written."""
    count = 0
    for event in events:
        out.write(orjson.dumps(event.to_dict(), option=orjson.OPT_APPEND_NEWLINE))
        count += 1
    return count


def _require_pyarrow() -> Any:
    require_extra("Parquet export", "parquet", "pyarrow")
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pa, pq


def write_parquet(events: Iterable[ArchivedEvent], path: str) -> int:
    """Write the events to a Parquet file at ``path``; return how many were written."""
    pa, pq = _require_pyarrow()
    schema = pa.schema(
        [
            ("offset", pa.int64()),
            ("appended_at", pa.timestamp("ms", tz="UTC")),
            *((name, pa.int64() if name == "version" else pa.string()) for name in _COLUMNS),
            ("headers", pa.string()),
            ("data", pa.string()),
        ]
    )
    count = 0
    rows: dict[str, list[Any]] = {name: [] for name in schema.names}

    def flush(writer: Any) -> None:
        writer.write_table(pa.table(rows, schema=schema))
        for column in rows.values():
            column.clear()

    with pq.ParquetWriter(path, schema) as writer:
        for event in events:
            env = event.envelope
            rows["offset"].append(event.offset)
            rows["appended_at"].append(event.timestamp)
            for name in _COLUMNS:
                rows[name].append(env.get(name))
            rows["headers"].append(orjson.dumps(env.get("headers") or {}).decode())
            rows["data"].append(orjson.dumps(env.get("data") or {}).decode())
            count += 1
            if len(rows["offset"]) >= _BATCH:
                flush(writer)
        flush(writer)
    return count


@contextlib.contextmanager
def replaced_on_success(path: Path) -> Iterator[Path]:
    """A temporary file beside ``path`` to write; it becomes ``path`` (fsynced, then renamed
    over it) only if the block succeeds, and is removed if it fails.

    So a failed or interrupted export leaves neither a partial output file nor a temporary
    one, and a file already at ``path`` stays as it was.
    """
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with tmp.open("rb") as written:
            os.fsync(written.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def export_to_file(events: Iterable[ArchivedEvent], fmt: ExportFormat, path: Path) -> int:
    """Write ``events`` to ``path`` in ``fmt``; return how many were written.

    ``path`` appears only once every event is written (see :func:`replaced_on_success`): an
    error while reading the archive (S3 unreachable, a corrupt segment) leaves no output.
    """
    with replaced_on_success(path) as tmp:
        if fmt is ExportFormat.PARQUET:
            return write_parquet(events, str(tmp))
        with tmp.open("wb") as out:
            return write_jsonl(events, out)

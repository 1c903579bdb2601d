"""Helpers of the sync tests."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import redis
from click.testing import CliRunner, Result

from localbroker import Broker
from localbroker.cli.main import cli
from localbroker.log import CommitLog


def stream_ids(client: redis.Redis, stream: str) -> list[str]:
    """Event ids of every entry of ``stream``, in stream order."""
    return [fields[b"id"].decode() for _, fields in client.xrange(stream)]


async def publish_n(broker: Broker, topic: str, n: int, start: int = 0) -> list[str]:
    """Publish ``n`` events in batches; their ids in order."""
    from localbroker import GenericEvent

    ids: list[str] = []
    for lo in range(start, start + n, 500):
        events = [GenericEvent(topic=topic, n=i) for i in range(lo, min(lo + 500, start + n))]
        ids.extend(r.id for r in await broker.publish_many(events))
    return ids


def log_envelopes(data_dir: Path) -> list[dict[str, Any]]:
    """Every envelope of the log of ``data_dir``, with its ``offset``, in log order."""
    out: list[dict[str, Any]] = []
    with CommitLog(data_dir / "log", readonly=True) as log:
        offset = log.start_offset
        while offset < log.next_offset:
            records = log.read(offset, max_records=10_000)
            out.extend({**orjson.loads(r.payload), "offset": r.offset} for r in records)
            offset = records[-1].offset + 1
    return out


def log_ids(data_dir: Path) -> list[str]:
    """Event ids of the whole log of ``data_dir``, in log order."""
    return [envelope["id"] for envelope in log_envelopes(data_dir)]


async def invoke(*args: str) -> Result:
    """Run a CLI command (in a thread: it starts its own event loop)."""
    return await asyncio.to_thread(CliRunner().invoke, cli, list(args))


async def cli_sync_status(data_dir: Path) -> dict[str, Any]:
    """What ``localbroker sync status --json`` prints for ``data_dir``, by target name."""
    result = await invoke("sync", "status", "--data", str(data_dir), "--json")
    assert result.exit_code == 0, result.output
    status: dict[str, Any] = orjson.loads(result.output)
    return status

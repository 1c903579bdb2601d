"""Helpers of the archive tests."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from localbroker import Broker
from localbroker.archive import Archive, ArchiveConfig, ObjectStore


def make_broker(data: Path, config: ArchiveConfig, **options: Any) -> tuple[Broker, Archive]:
    """A broker with small segments (many seal quickly) and the archive extension."""
    archive = Archive(config)
    options.setdefault("segment_bytes", 4096)
    return Broker(data, extensions=[archive], **options), archive


async def publish_numbered(broker: Broker, count: int, start: int = 0) -> None:
    """Events ``n`` = start..start+count-1, alternating topics ``order.placed`` / ``user.seen``."""
    for n in range(start, start + count):
        topic = "order.placed" if n % 2 == 0 else "user.seen"
        await broker.publish(topic, {"n": n, "pad": "x" * 40})


def object_keys(store: ObjectStore, prefix: str) -> list[str]:
    return store.list_keys(prefix)


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()

"""Helpers of the archive tests."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from localbroker import Broker
from localbroker.archive import Archive, ArchiveConfig


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


def object_keys(s3: Any, bucket: str, prefix: str) -> list[str]:
    response = s3.list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for o in response.get("Contents", []))


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()

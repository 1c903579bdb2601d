"""Archive throughput against moto's S3 server: upload MB/s, reader events/s vs. local segments.

Run standalone: ``python -m benchmarks.bench_archive [--quick]``.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import boto3

from localbroker import Broker
from localbroker.archive import ArchiveConfig, ArchiveReader, archive_now
from localbroker.events import decode_envelope
from localbroker.log import CommitLog, scan_segment
from tests.servers.s3 import DUMMY_CREDENTIALS, S3Server


async def _fill(data: Path, events: int) -> None:
    broker = Broker(data, segment_bytes=4 * 2**20, fsync="never", index_events=False)
    async with broker:
        for n in range(events):
            await broker.publish(
                "bench.order" if n % 2 else "bench.user", {"n": n, "pad": "x" * 150}
            )
        broker.log.roll()  # seal the tail too: everything is archived


def _scan_local(log_dir: Path) -> int:
    log = CommitLog(log_dir, readonly=True).open()
    try:
        paths = [s.path for s in log.segments() if s.sealed]
    finally:
        log.close()
    count = 0
    for path in paths:
        for record in scan_segment(path):
            decode_envelope(record.payload)
            count += 1
    return count


async def run(quick: bool) -> list[dict[str, Any]]:
    """Upload throughput (MB/s) and reader throughput (events/s, vs. scanning local segments)."""
    os.environ.update({k: os.environ.get(k, v) for k, v in DUMMY_CREDENTIALS.items()})
    server = S3Server()
    server.start()
    try:
        boto3.client("s3", endpoint_url=server.url).create_bucket(Bucket="bench-archive")
        config = ArchiveConfig(bucket="bench-archive", prefix="bench", endpoint_url=server.url)
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp)
            await _fill(data, 20_000 if quick else 200_000)

            started = time.perf_counter()
            uploaded, _deleted = await archive_now(data, config)
            upload_s = time.perf_counter() - started
            size = sum(m.size_bytes for m in uploaded)

            started = time.perf_counter()
            local_events = await asyncio.to_thread(_scan_local, data / "log")
            local_s = time.perf_counter() - started

            reader = ArchiveReader(config)
            started = time.perf_counter()
            archived_events = sum(1 for _ in reader.events())
            read_s = time.perf_counter() - started
        assert archived_events == local_events, (archived_events, local_events)
    finally:
        server.stop()
    return [
        {
            "name": f"archive upload ({len(uploaded)} segments, {size / 2**20:.0f} MiB, moto)",
            "value": size / 2**20 / upload_s,
            "unit": "MiB/s",
            "baseline": None,
            "baseline_value": None,
        },
        {
            "name": f"archive reader ({archived_events} events, moto)",
            "value": archived_events / read_s,
            "unit": "events/s",
            "baseline": "scanning the same local segments",
            "baseline_value": local_events / local_s,
        },
    ]


if __name__ == "__main__":
    for row in asyncio.run(run(quick="--quick" in sys.argv)):
        ratio = (
            f"  ({row['value'] / row['baseline_value']:.2f}x {row['baseline']})"
            if row["baseline_value"]
            else ""
        )
        print(f"{row['name']}: {row['value']:,.1f} {row['unit']}{ratio}")

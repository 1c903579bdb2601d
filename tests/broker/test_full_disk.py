"""A real full disk (a 2 MiB tmpfs under the log): publishes fail whole, and the log goes on."""

from __future__ import annotations

from pathlib import Path

import pytest

from localbroker import Broker, LocalBrokerError
from localbroker.log import verify
from tests.broker.events import Note
from tests.disk import fill_until, small_tmpfs

SEGMENT = 64 * 1024


async def test_publish_many_is_all_or_nothing_when_the_disk_fills_after_a_roll(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    log_dir = data / "log"
    with small_tmpfs(log_dir, "2m"):
        seen: list[int] = []
        broker = Broker(data, segment_bytes=SEGMENT, start_from="earliest")

        @broker.subscriber("note.added", name="reader")
        async def read(event: Note) -> None:
            seen.append(event.n)

        async with broker:
            await broker.publish_many(Note(n=i) for i in range(100))
            segments = sorted(p.name for p in log_dir.glob("*.log"))
            sizes = {p.name: p.stat().st_size for p in log_dir.glob("*.log")}
            # Room for about three segments, and a batch of about six: the disk fills up in
            # the middle of the batch, after it rolled to new segments.
            filler = fill_until(log_dir, 3 * SEGMENT + SEGMENT // 2)
            with pytest.raises(LocalBrokerError, match="No space left on device"):
                await broker.publish_many(Note(n=1000 + i) for i in range(1600))

            assert broker.log.next_offset == 100
            assert sorted(p.name for p in log_dir.glob("*.log")) == segments
            assert {p.name: p.stat().st_size for p in log_dir.glob("*.log")} == sizes
            report = verify(log_dir)
            assert report.ok, report.problems

            filler.unlink()
            results = await broker.publish_many(Note(n=5000 + i) for i in range(10))
            assert [r.offset for r in results] == list(range(100, 110))
            await broker.wait_idle()
        assert seen == [*range(100), *range(5000, 5010)]
        assert verify(log_dir).records == 110

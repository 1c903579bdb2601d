"""Subscribers served from the archive: replay from earliest, lagging subscribers, corruption."""

from __future__ import annotations

from pathlib import Path

import pytest

from localbroker import Broker, GenericEvent
from localbroker.archive import (
    ArchiveChecksumError,
    ArchiveConfig,
    ObjectStore,
    RetentionPolicy,
    segment_key,
)
from localbroker.archive.reader import ArchiveReader
from tests.archive.helpers import make_broker, publish_numbered
from tests.waiting import wait_until


async def archive_and_trim(data: Path, config: ArchiveConfig, count: int) -> int:
    """Publish ``count`` events, archive, delete every archived local segment; return local start."""
    broker, archive = make_broker(data, config)
    async with broker:
        await publish_numbered(broker, count)
        await archive.run_once()
        start = broker.log.start_offset
    assert start > 0, "retention deleted nothing"
    return start


def retained(config: ArchiveConfig) -> ArchiveConfig:
    return config.model_copy(update={"retention": RetentionPolicy(max_bytes=0)})


async def test_earliest_replays_archive_then_local_exactly_once(
    tmp_path: Path, archive_config: ArchiveConfig
) -> None:
    config = retained(archive_config)
    local_start = await archive_and_trim(tmp_path / "data", config, 300)
    seen: list[int] = []
    broker, archive = make_broker(tmp_path / "data", config)

    @broker.subscriber("order.placed", "user.seen", name="replay", start_from="earliest")
    async def handle(event: GenericEvent) -> None:
        seen.append(event.payload()["n"])

    async with broker:
        await publish_numbered(broker, 20, start=300)  # the live tail continues the history
        await broker.wait_idle()
        downloads = archive._cache.downloads if archive._cache else 0
        archived = len(archive.tiering.manifests)
    assert seen == list(range(320))
    # One GET per archived segment, not per record (the cache serves the rest).
    assert downloads == archived > 1
    assert local_start == archive.tiering.manifests[-1].next_offset


async def test_lagging_subscriber_is_served_from_the_archive(
    tmp_path: Path, archive_config: ArchiveConfig
) -> None:
    config = retained(archive_config)
    data = tmp_path / "data"
    first = Broker(data, segment_bytes=4096)

    @first.subscriber("user.seen", name="lagging", start_from="earliest")
    async def never_runs(event: GenericEvent) -> None:  # registered, then the app stops
        raise AssertionError("not yet")

    async with first:
        pass  # the subscriber's position is 0
    await archive_and_trim(data, config, 200)

    seen: list[int] = []
    broker, _archive = make_broker(data, config)

    @broker.subscriber("user.seen", name="lagging")
    async def catch_up(event: GenericEvent) -> None:
        seen.append(event.payload()["n"])

    async with broker:
        await broker.wait_idle()
    assert seen == list(range(1, 200, 2))


async def test_corrupt_archived_segment_is_reported_not_delivered(
    tmp_path: Path, archive_config: ArchiveConfig, objects: ObjectStore
) -> None:
    config = retained(archive_config)
    await archive_and_trim(tmp_path / "data", config, 100)
    key = segment_key("shop", 0)
    good = objects.get_bytes(key)
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF
    objects.put_bytes(key, bytes(bad))

    with pytest.raises(ArchiveChecksumError, match="corrupt"):
        list(ArchiveReader(config).events())

    seen: list[int] = []
    broker, archive = make_broker(tmp_path / "data", config)

    @broker.subscriber("order.placed", "user.seen", name="replay", start_from="earliest")
    async def handle(event: GenericEvent) -> None:
        seen.append(event.payload()["n"])

    def reported() -> bool:
        return "corrupt" in (archive.status().last_error or "")

    async with broker:
        await wait_until(reported, what="the corrupt segment to be reported")
        first_error_at = archive.status().last_error_at
        # The subscriber waits and reads the same offset again: once that read failed too, it
        # had its chance to skip ahead.
        await wait_until(
            lambda: archive.status().last_error_at != first_error_at, what="a second read"
        )
        assert seen == []  # nothing from the bad segment, and nothing after it out of order
        assert reported()
        objects.put_bytes(key, good)  # an operator repairs it
        await broker.wait_idle()
    assert seen == list(range(100))

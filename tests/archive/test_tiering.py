"""Uploading sealed segments (manifest, checksum, multipart), retention, start-up errors."""

from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from localbroker import ArchiveError, Broker, ConfigurationError, GenericEvent
from localbroker.archive import (
    Archive,
    ArchiveAccessError,
    ArchiveConfig,
    ObjectStore,
    RetentionPolicy,
    manifest_key,
    segment_key,
)
from localbroker.archive.tiering import archive_now
from localbroker.log import CommitLog, scan_segment
from tests.archive.helpers import make_broker, object_keys, publish_numbered, sha256_of
from tests.servers.s3 import S3Server
from tests.waiting import wait_until


async def test_upload_writes_segment_and_manifest_with_checksum(
    tmp_path: Path, archive_config: ArchiveConfig, objects: ObjectStore
) -> None:
    broker, archive = make_broker(tmp_path / "data", archive_config)
    async with broker:
        await publish_numbered(broker, 200)
        uploaded, deleted = await archive.run_once()
        segments = broker.log.segments()
    sealed = [s for s in segments if s.sealed]
    assert len(sealed) >= 3
    assert [m.base_offset for m in uploaded] == [s.base_offset for s in sealed]
    assert deleted == []  # no retention configured
    keys = object_keys(objects, "shop/")
    # The active segment is not archived.
    assert keys == sorted(
        [segment_key("shop", s.base_offset) for s in sealed]
        + [manifest_key("shop", s.base_offset) for s in sealed]
    )
    for seg in sealed:
        local = seg.path.read_bytes()
        assert objects.get_bytes(segment_key("shop", seg.base_offset)) == local
        manifest = json.loads(objects.get_bytes(manifest_key("shop", seg.base_offset)))
        records = list(scan_segment(seg.path))
        assert manifest["base_offset"] == seg.base_offset
        assert manifest["next_offset"] == seg.next_offset
        assert manifest["record_count"] == len(records)
        assert manifest["first_timestamp"] == records[0].timestamp
        assert manifest["last_timestamp"] == records[-1].timestamp
        assert manifest["topics"] == ["order.placed", "user.seen"]
        assert manifest["sha256"] == sha256_of(local)
        assert manifest["size_bytes"] == len(local)
    status = archive.status()
    assert status.archived_segments == len(sealed)
    assert status.archived_until == sealed[-1].next_offset
    assert status.last_error is None


async def test_manifest_time_range_is_the_segments_own(
    tmp_path: Path, archive_config: ArchiveConfig
) -> None:
    """Issue 9 item 18: manifests seemed to end at the next segment's first timestamp.

    Batches that straddle a roll give the last record of one segment and the first of the next
    the same millisecond, so equal neighbours are expected; what must hold is that each
    manifest describes exactly its own records, whichever way the segment was archived.
    """
    data = tmp_path / "data"
    for _session in range(2):  # the second session finds sealed segments on disk
        async with Broker(data, segment_bytes=4096) as broker:
            for n in range(20):
                batch = [GenericEvent(topic="t.batch", n=n, pad="x" * 40) for _ in range(23)]
                await broker.publish_many(batch)
                await asyncio.gather(*(broker.publish("t.one", {"n": n}) for _ in range(9)))
    uploaded, _deleted = await archive_now(data, archive_config)  # `localbroker archive run`
    with CommitLog(data / "log", readonly=True) as log:
        infos = {s.base_offset: s for s in log.segments() if s.sealed}
    assert [m.base_offset for m in uploaded] == sorted(infos)
    assert len(uploaded) >= 32
    for manifest in uploaded:
        records = list(scan_segment(infos[manifest.base_offset].path))
        own = (records[0].timestamp, records[-1].timestamp, records[-1].offset + 1)
        assert (manifest.first_timestamp, manifest.last_timestamp, manifest.next_offset) == own
        assert infos[manifest.base_offset].last_timestamp == records[-1].timestamp
    for before, after in itertools.pairwise(uploaded):
        assert before.last_timestamp is not None
        assert after.first_timestamp is not None
        assert before.last_timestamp <= after.first_timestamp


@pytest.mark.s3
async def test_large_segment_goes_up_in_verified_parts(
    tmp_path: Path, s3_config: ArchiveConfig, s3: Any
) -> None:
    config = s3_config.model_copy(update={"multipart_threshold": 5 * 2**20, "part_size": 5 * 2**20})
    broker, archive = make_broker(tmp_path / "data", config, segment_bytes=12 * 2**20)
    async with broker:
        for n in range(12):  # 1 MiB each: the 12th no longer fits and rolls the segment
            await broker.publish("blob.stored", {"n": n, "blob": f"{n:x}" * 2**20})
        (manifest,) = (await archive.run_once())[0]
        local = broker.log.segments()[0].path.read_bytes()
    head = s3.head_object(Bucket=config.bucket, Key=manifest.key)
    assert head["ETag"].strip('"').endswith("-3")  # 5 + 5 + ~1 MiB
    assert head["Metadata"]["sha256"] == sha256_of(local)
    assert manifest.size_bytes == len(local) > 10 * 2**20
    assert manifest.sha256 == sha256_of(local)
    assert s3.list_multipart_uploads(Bucket=config.bucket).get("Uploads", []) == []


@pytest.mark.s3
async def test_retention_deletes_only_archived_segments(
    tmp_path: Path, s3_config: ArchiveConfig, s3_server: S3Server
) -> None:
    config = s3_config.model_copy(update={"retention": RetentionPolicy(max_bytes=0)})
    broker, archive = make_broker(tmp_path / "data", config)
    async with broker:
        await publish_numbered(broker, 100)
        uploaded, deleted = await archive.run_once()
        assert [d.base_offset for d in deleted] == [m.base_offset for m in uploaded]
        archived_until = uploaded[-1].next_offset
        assert broker.log.start_offset == archived_until

        # S3 goes away: new sealed segments cannot be archived, so retention keeps them.
        s3_server.stop()
        await publish_numbered(broker, 100, start=100)
        before = [s.base_offset for s in broker.log.segments()]
        with pytest.raises(ArchiveError):
            await archive.run_once()
        assert archive.tiering.apply_retention() == []
        assert [s.base_offset for s in broker.log.segments()] == before
        assert broker.log.start_offset == archived_until
        assert "cannot upload" in (archive.status().last_error or "")

        s3_server.start()
        uploaded, deleted = await archive.run_once()
        assert uploaded
        assert [d.base_offset for d in deleted] == [m.base_offset for m in uploaded]
        assert [s.sealed for s in broker.log.segments()] == [False]  # only the active one left
        assert archive.status().last_error is None


async def test_retention_by_age(tmp_path: Path, archive_config: ArchiveConfig) -> None:
    config = archive_config.model_copy(update={"retention": RetentionPolicy(max_age=3600)})
    broker, archive = make_broker(tmp_path / "data", config)
    async with broker:
        await publish_numbered(broker, 100)
        await archive.run_once()
        sealed = [s for s in broker.log.segments() if s.sealed]
        assert archive.tiering.apply_retention() == []  # nothing is an hour old
        newest = max(s.last_timestamp or 0 for s in sealed) / 1000
        deleted = archive.tiering.apply_retention(now=newest + 3601)  # an hour later
        assert [d.base_offset for d in deleted] == [s.base_offset for s in sealed]
        assert broker.log.start_offset == sealed[-1].next_offset


@pytest.mark.s3
async def test_missing_bucket_is_one_clear_error(tmp_path: Path, s3_config: ArchiveConfig) -> None:
    config = s3_config.model_copy(update={"bucket": "no-such-bucket"})
    broker, _archive = make_broker(tmp_path / "data", config)
    with pytest.raises(ArchiveAccessError, match=r"no-such-bucket.*does not exist"):
        await broker.start()
    # The failed start released the directory: another broker can open it.
    async with Broker(tmp_path / "data") as again:
        assert again.log.next_offset == 0


@pytest.mark.s3
async def test_wrong_credentials_are_one_clear_error(
    tmp_path: Path, s3_config: ArchiveConfig, s3_server: S3Server
) -> None:
    broker, _archive = make_broker(tmp_path / "data", s3_config)
    s3_server.require_auth(True)
    try:
        with pytest.raises(ArchiveAccessError, match="403: check the credentials"):
            await broker.start()
    finally:
        s3_server.require_auth(False)


@pytest.mark.s3
async def test_unreachable_at_start_keeps_segments_and_resumes(
    tmp_path: Path, s3_config: ArchiveConfig, s3_server: S3Server
) -> None:
    config = s3_config.model_copy(update={"retention": RetentionPolicy(max_bytes=0)})
    broker, archive = make_broker(tmp_path / "data", config)
    s3_server.stop()
    async with broker:  # starts anyway: publishing never depends on S3
        await publish_numbered(broker, 100)
        assert archive.status().last_error is not None
        with pytest.raises(ArchiveError):
            await archive.run_once()
        assert broker.log.start_offset == 0
        s3_server.start()
        uploaded, deleted = await archive.run_once()
        assert uploaded
        assert len(deleted) == len(uploaded)


async def test_config_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCALBROKER_ARCHIVE_BUCKET", "events")
    monkeypatch.setenv("LOCALBROKER_ARCHIVE_PREFIX", "/shop/")
    monkeypatch.setenv("LOCALBROKER_ARCHIVE_RETENTION", '{"max_bytes": 1000}')
    archive = Archive(endpoint_url="http://127.0.0.1:1")
    assert archive.config.bucket == "events"
    assert archive.config.prefix == "shop"
    assert archive.config.retention.max_bytes == 1000
    assert archive.config.endpoint_url == "http://127.0.0.1:1"
    monkeypatch.setenv("LOCALBROKER_ARCHIVE_ENDPOINT_URL", "http://127.0.0.1:2")
    assert Archive().config.endpoint_url == "http://127.0.0.1:2"
    assert Archive(endpoint_url=None).config.endpoint_url is None  # None is a value here
    monkeypatch.setenv("LOCALBROKER_ARCHIVE_PART_SIZE", "12")
    with pytest.raises(ConfigurationError, match="part_size"):
        Archive()
    monkeypatch.delenv("LOCALBROKER_ARCHIVE_BUCKET")
    monkeypatch.delenv("LOCALBROKER_ARCHIVE_PART_SIZE")
    with pytest.raises(ConfigurationError, match=r"LOCALBROKER_ARCHIVE_BUCKET.*DIRECTORY"):
        Archive()


async def test_background_loop_uploads_while_publishing(
    tmp_path: Path, archive_config: ArchiveConfig
) -> None:
    config = archive_config.model_copy(update={"upload_interval": 0.05})
    broker, archive = make_broker(tmp_path / "data", config)
    async with broker:
        await publish_numbered(broker, 200)
        sealed = [s.base_offset for s in broker.log.segments() if s.sealed]
        await wait_until(
            lambda: archive.status().archived_segments >= len(sealed),
            what="the background loop to upload every sealed segment",
        )
        assert archive.tiering.pending() == []
        assert [m.base_offset for m in archive.tiering.manifests] == sealed

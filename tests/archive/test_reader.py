"""The batch reader (topics, time, only overlapping segments) and the export command."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from localbroker.archive import ArchiveConfig, ArchiveReader, read
from localbroker.cli.main import cli
from tests.archive.helpers import make_broker, publish_numbered

pytestmark = pytest.mark.s3


async def archived_history(data: Path, config: ArchiveConfig) -> list[dict[str, Any]]:
    """Archive three bursts of events far apart in time; return what S3 holds, in order."""
    broker, archive = make_broker(data, config)
    async with broker:
        for burst in range(3):
            await publish_numbered(broker, 60, start=burst * 60)
            broker.log.roll()  # each burst in segments of its own
            await archive.run_once()
    return [e.to_dict() for e in ArchiveReader(config).events()]


async def invoke(args: list[str]) -> Any:
    """Run the CLI in a thread: its commands call asyncio.run themselves."""
    return await asyncio.to_thread(CliRunner().invoke, cli, args)


async def export(config: ArchiveConfig, *args: str) -> Any:
    location = [
        "--bucket",
        config.bucket,
        "--prefix",
        "shop",
        "--endpoint-url",
        str(config.endpoint_url),
    ]
    return await invoke(["export", *args, *location])


def count_segment_gets(reader: ArchiveReader) -> list[str]:
    gets: list[str] = []

    def seen(params: dict[str, Any], **kwargs: Any) -> None:
        if "/segments/" in params["Key"]:
            gets.append(params["Key"])

    reader.s3.client.meta.events.register("before-parameter-build.s3.GetObject", seen)
    return gets


async def test_reader_filters_by_topic_and_time_and_reads_only_overlapping_segments(
    tmp_path: Path, archive_config: ArchiveConfig
) -> None:
    everything = await archived_history(tmp_path / "data", archive_config)
    assert [e["data"]["n"] for e in everything] == list(range(180))
    # The middle burst, by append time.
    middle = [e for e in everything if 60 <= e["data"]["n"] < 120]
    since = datetime.fromtimestamp(middle[0]["appended_at"] / 1000, UTC)
    until = datetime.fromtimestamp((middle[-1]["appended_at"] + 1) / 1000, UTC)

    reader = ArchiveReader(archive_config)
    gets = count_segment_gets(reader)
    overlapping = reader.manifests(["order.*"], since, until)
    events = list(reader.events(["order.*"], since, until))
    all_manifests = reader.manifests()
    assert len(overlapping) < len(all_manifests)
    assert sorted(gets) == sorted(m.key for m in overlapping)  # one GET each, no other
    expected = [
        e["data"]["n"]
        for e in everything
        if e["topic"] == "order.placed"
        and since.timestamp() * 1000 <= e["appended_at"] < until.timestamp() * 1000
    ]
    assert [e.payload["n"] for e in events] == expected
    assert {e.topic for e in events} == {"order.placed"}
    assert 30 <= len(expected) <= 90

    by_function = read(
        bucket=archive_config.bucket,
        prefix="shop",
        endpoint_url=archive_config.endpoint_url,
        topics=["user.seen"],
    )
    assert [e.payload["n"] for e in by_function] == list(range(1, 180, 2))


async def test_export_jsonl_round_trips(tmp_path: Path, archive_config: ArchiveConfig) -> None:
    everything = await archived_history(tmp_path / "data", archive_config)
    out = tmp_path / "out.jsonl"
    result = await export(
        archive_config, "--topic", "user.seen", "--format", "jsonl", "-o", str(out)
    )
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines == [e for e in everything if e["topic"] == "user.seen"]


async def test_export_jsonl_to_stdout(tmp_path: Path, archive_config: ArchiveConfig) -> None:
    everything = await archived_history(tmp_path / "data", archive_config)
    result = await export(archive_config, "--topic", "user.seen", "--format", "jsonl")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines == [e for e in everything if e["topic"] == "user.seen"]


async def test_export_parquet(tmp_path: Path, archive_config: ArchiveConfig) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    everything = await archived_history(tmp_path / "data", archive_config)
    out = tmp_path / "out.parquet"
    result = await export(archive_config, "--format", "parquet", "-o", str(out))
    assert result.exit_code == 0, result.output
    table = pq.read_table(out)
    assert table.column("id").to_pylist() == [e["id"] for e in everything]
    assert [json.loads(d)["n"] for d in table.column("data").to_pylist()] == list(range(180))


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
async def test_failed_export_leaves_no_partial_file(
    tmp_path: Path, archive_config: ArchiveConfig, s3: Any, fmt: str
) -> None:
    if fmt == "parquet":
        pytest.importorskip("pyarrow")
    await archived_history(tmp_path / "data", archive_config)
    # The last segment is corrupt in S3: the export fails after writing the others' events.
    last = ArchiveReader(archive_config).manifests()[-1]
    s3.put_object(Bucket=archive_config.bucket, Key=last.key, Body=b"not the segment")
    out = tmp_path / "out"
    out.mkdir()
    result = await export(archive_config, "--format", fmt, "-o", str(out / f"new.{fmt}"))
    assert result.exit_code == 1
    assert f"{last.key}" in result.output
    assert "corrupt" in result.output
    assert list(out.iterdir()) == [], "a partial output or a temporary file was left"
    # A file already there is left as it was.
    kept = out / f"kept.{fmt}"
    kept.write_bytes(b"an earlier export")
    result = await export(archive_config, "--format", fmt, "-o", str(kept))
    assert result.exit_code == 1
    assert kept.read_bytes() == b"an earlier export"
    assert list(out.iterdir()) == [kept]


async def test_archive_status_and_run_commands(
    tmp_path: Path, archive_config: ArchiveConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    broker, _archive = make_broker(data, archive_config)
    async with broker:
        await publish_numbered(broker, 100)
    status = await invoke(["archive", "status", "--data", str(data)])
    assert status.exit_code == 0, status.output
    assert "pending upload" in status.output
    monkeypatch.setenv("LOCALBROKER_ARCHIVE_BUCKET", archive_config.bucket)
    monkeypatch.setenv("LOCALBROKER_ARCHIVE_PREFIX", "cli")
    monkeypatch.setenv("LOCALBROKER_ARCHIVE_ENDPOINT_URL", str(archive_config.endpoint_url))
    ran = await invoke(["archive", "run", "--data", str(data)])
    assert ran.exit_code == 0, ran.output
    sealed = len(ArchiveReader(archive_config.model_copy(update={"prefix": "cli"})).manifests())
    assert f"uploaded {sealed} segments" in ran.output
    assert sealed > 1
    status = await invoke(["archive", "status", "--data", str(data)])
    assert f"{sealed} (" in status.output
    assert "0 (0 bytes)" in status.output  # nothing pending any more

"""The archive in a local directory: what only a directory does (a missing directory, a full
disk, leftovers of an interrupted write). What both stores do is tested against each of them
through the ``archive_config`` fixture."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from localbroker import Broker
from localbroker.archive import (
    Archive,
    ArchiveAccessError,
    ArchiveConfig,
    ArchiveReader,
    ArchiveUnavailableError,
    LocalStore,
    RetentionPolicy,
    manifest_key,
    segment_key,
)
from localbroker.errors import ConfigurationError
from tests.archive.helpers import make_broker, publish_numbered
from tests.conftest import IN_CI


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs mounted for the test (root only): a real full disk. Skipped where it
    cannot be mounted, except in CI."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        message = f"cannot mount a tmpfs: {done.stderr.strip()}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def grow(mount_point: Path, size: str) -> None:
    """Make room on the tmpfs (an operator freeing space)."""
    subprocess.run(["mount", "-o", f"remount,size={size}", str(mount_point)], check=True)


async def test_full_disk_keeps_segments_local_and_leaves_no_partial_object(
    tmp_path: Path, small_disk: Path
) -> None:
    config = ArchiveConfig(
        directory=small_disk,
        prefix="shop",
        upload_interval=3600,
        retention=RetentionPolicy(max_bytes=0),
        cache_dir=tmp_path / "cache",
    )
    broker, archive = make_broker(tmp_path / "data", config)
    async with broker:
        await publish_numbered(broker, 600)  # ~80 KiB of sealed segments: more than the disk
        sealed = [s for s in broker.log.segments() if s.sealed]
        with pytest.raises(ArchiveUnavailableError, match="the disk is full"):
            await archive.run_once()
        archived = archive.tiering.manifests
        assert 0 < len(archived) < len(sealed)
        # Retention deletes only what is archived: the rest stays local.
        archive.tiering.apply_retention()
        assert broker.log.start_offset == archived[-1].next_offset
        assert "the disk is full" in (archive.status().last_error or "")
        files = sorted(str(p.relative_to(small_disk)) for p in small_disk.rglob("*") if p.is_file())
        assert not [f for f in files if f.endswith(".tmp")], files
        # Every manifest's segment is whole: readers see exactly the archived segments.
        events = list(ArchiveReader(config).events())
        assert [e.payload["n"] for e in events] == list(range(archived[-1].next_offset))

        grow(small_disk, "4m")
        uploaded, _deleted = await archive.run_once()
        assert [m.base_offset for m in archive.tiering.manifests] == [s.base_offset for s in sealed]
        assert uploaded
        assert archive.status().last_error is None
    events = list(ArchiveReader(config).events())
    assert [e.payload["n"] for e in events] == list(range(sealed[-1].next_offset))


def test_leftovers_of_an_interrupted_write_are_never_listed_and_are_removed(
    tmp_path: Path,
) -> None:
    store = LocalStore(tmp_path)
    store.put_bytes(manifest_key("shop", 0), b"{}")
    leftover = tmp_path / "shop" / "segments" / f".{segment_key('shop', 7).rsplit('/', 1)[1]}.x.tmp"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"half a segment")  # a crash in the middle of a put
    assert store.list_keys("shop/") == [manifest_key("shop", 0)]
    assert store.abort_incomplete("shop/segments/") == 1
    assert not leftover.exists()


async def test_missing_directory_is_one_clear_error(tmp_path: Path) -> None:
    config = ArchiveConfig(directory=tmp_path / "no-such-dir", prefix="shop")
    broker, _archive = make_broker(tmp_path / "data", config)
    with pytest.raises(ArchiveAccessError, match=r"no-such-dir.*does not exist"):
        await broker.start()
    assert not (tmp_path / "no-such-dir").exists(), "the archive created the directory"
    async with Broker(tmp_path / "data") as again:  # the failed start released the directory
        assert again.log.next_offset == 0


async def test_a_store_can_be_given_directly(tmp_path: Path) -> None:
    archive = Archive(store=LocalStore(tmp_path), prefix="direct", upload_interval=3600)
    broker = Broker(tmp_path / "data", segment_bytes=4096, extensions=[archive])
    async with broker:
        await publish_numbered(broker, 100)
        uploaded, _ = await archive.run_once()
    assert uploaded
    assert (tmp_path / "direct" / "manifests").is_dir()
    with pytest.raises(ConfigurationError, match="a bucket or a directory, not both"):
        Archive(bucket="events", directory=str(tmp_path))

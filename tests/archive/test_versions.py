"""Archive reads upcast older versions with the registry they are given; stored events stay."""

from __future__ import annotations

from pathlib import Path

import pytest

from localbroker import GenericEvent, SerializationError
from localbroker.archive import ArchiveConfig, ArchiveReader, read
from tests.archive.helpers import make_broker
from tests.versioned import UserRegistered, as_tuple, expected_v3, stored_versions, upcasters

pytestmark = pytest.mark.s3


async def test_archive_reads_upcast_versions_one_two_three(
    tmp_path: Path, archive_config: ArchiveConfig
) -> None:
    broker, archive = make_broker(tmp_path / "data", archive_config)
    broker.include_router(upcasters)
    async with broker:
        for event in stored_versions():
            await broker.publish(event)
        broker.log.roll()
        await archive.run_once()

    # The same archive, named the way a data job names it (a bucket or a directory).
    endpoint = archive_config.endpoint_url
    location = {
        "bucket": archive_config.bucket,
        "directory": archive_config.directory,
        "prefix": archive_config.prefix,
        "endpoint_url": str(endpoint) if endpoint is not None else None,
    }
    archived = list(read(**location, registry=broker.registry))
    assert [as_tuple(e.to_event(UserRegistered)) for e in archived] == expected_v3()
    # Without a class named: the newest class of the topic in the registry.
    assert [as_tuple(e.to_event()) for e in archived] == expected_v3()
    # Payloads are as stored; the archive holds what was published.
    assert [e.envelope["version"] for e in archived] == [1, 2, 3]
    assert archived[0].payload == {"name": "Ann Lee"}

    # Without the application's upcasters: as stored, and a clear error for a class.
    bare = list(ArchiveReader(archive_config).events())
    assert type(bare[0].to_event()) is GenericEvent
    assert bare[0].to_event().payload() == {"name": "Ann Lee"}
    with pytest.raises(
        SerializationError, match=r"no upcaster of 'user\.registered' from version 1"
    ):
        bare[0].to_event(UserRegistered)

"""S3 stops in the middle of a multipart upload and comes back: nothing lost, nothing half-visible."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from localbroker import ArchiveError
from localbroker.archive import ArchiveConfig, ArchiveReader, RetentionPolicy, manifest_key
from tests.archive.helpers import make_broker, object_keys
from tests.servers.s3 import S3Server

pytestmark = pytest.mark.s3


async def test_s3_stopped_mid_upload_then_restarted(
    tmp_path: Path, s3_config: ArchiveConfig, s3_server: S3Server, s3: Any
) -> None:
    config = s3_config.model_copy(
        update={
            "multipart_threshold": 5 * 2**20,
            "part_size": 5 * 2**20,
            "max_concurrency": 1,  # parts in order: the outage hits after exactly one
            "retention": RetentionPolicy(max_bytes=0),
        }
    )
    broker, archive = make_broker(tmp_path / "data", config, segment_bytes=12 * 2**20)
    parts: list[int] = []

    def stop_on_second_part(params: dict[str, Any], **kwargs: Any) -> None:
        parts.append(params["PartNumber"])
        if len(parts) == 2:
            s3_server.stop()

    async with broker:
        store = archive.tiering.objects.store
        store.client.meta.events.register(
            "before-parameter-build.s3.UploadPart", stop_on_second_part
        )
        for n in range(12):
            await broker.publish("blob.stored", {"n": n, "blob": f"{n:x}" * 2**20})
        segment = broker.log.segments()[0]
        assert segment.sealed
        with pytest.raises(ArchiveError):
            await archive.run_once()
        assert parts[:2] == [1, 2]
        assert broker.log.start_offset == 0  # retention kept the only copy

        s3_server.start()
        # Before the archive tries again: the interrupted upload is not visible as an object,
        # and there is no manifest, so no reader can see a partial segment.
        assert object_keys(store, "shop/") == []
        assert ArchiveReader(config).manifests() == []

        store.client.meta.events.unregister(
            "before-parameter-build.s3.UploadPart", stop_on_second_part
        )
        uploaded, deleted = await archive.run_once()
        assert [m.base_offset for m in uploaded] == [0]
        assert [d.base_offset for d in deleted] == [0]

    # Nothing lost: the archive holds every record of the segment, checksum verified.
    assert object_keys(store, "shop/manifests/") == [manifest_key("shop", 0)]
    assert s3.list_multipart_uploads(Bucket=config.bucket).get("Uploads", []) == []
    events = list(ArchiveReader(config).events())
    assert [e.payload["n"] for e in events] == list(range(11))
    assert events[3].payload["blob"] == "3" * 2**20

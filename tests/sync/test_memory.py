"""MemoryTarget: the base-class logic (cursor, outage, resume, status) without a server."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from localbroker import Broker
from localbroker.sync import MemoryServer, MemoryTarget
from tests.sync.conftest import FAST
from tests.sync.contract import Backend, SyncTargetContract, ids_once
from tests.sync.helpers import invoke, log_ids, publish_n


class MemoryBackend(Backend):
    server_outlives_process = False

    def __init__(self) -> None:
        self.server = MemoryServer()

    def target(self, **options: Any) -> MemoryTarget:
        return MemoryTarget(self.server, **{**FAST, **options})

    def events(self) -> list[dict[str, Any]]:
        return [{**e, "time": datetime.fromisoformat(e["time"])} for e in self.server.events()]


class TestMemoryContract(SyncTargetContract):
    @pytest.fixture
    def backend(self) -> MemoryBackend:
        return MemoryBackend()


async def test_a_lost_reply_is_not_stored_twice(data_dir: Path) -> None:
    """A batch the server stored but whose confirmation never came back: the mirror resumes
    after the server's watermark, so the batch is not sent again."""
    backend = MemoryBackend()
    target = backend.target(batch_size=100)
    async with Broker(data_dir, sync=[target]) as broker:
        await publish_n(broker, "memory.lost", 100)
        await target.wait_mirrored()
        backend.server.lose_next_replies(1)
        await publish_n(broker, "memory.lost", 100, start=100)
        await target.wait_mirrored()
        status = target.status()
    assert backend.server.batches == 2, "the batch whose reply was lost was sent again"
    assert (
        status["last_error"]
        == "TargetUnavailableError: memory server: connection lost before the reply"
    )
    assert ids_once(backend) == log_ids(data_dir)


async def test_wait_mirrored_names_what_it_waits_for(data_dir: Path) -> None:
    backend = MemoryBackend()
    target = backend.target()
    async with Broker(data_dir, sync=[target]) as broker:
        backend.server.stop()
        await publish_n(broker, "memory.down", 3)
        with pytest.raises(TimeoutError, match=r"memory: after 0.2 s, .* up to offset 0 of 3"):
            await target.wait_mirrored(timeout=0.2)


async def test_cli_sync_status_from_another_process(data_dir: Path) -> None:
    target = MemoryTarget(service="shop", **FAST)
    async with Broker(data_dir, sync=[target]) as broker:
        await publish_n(broker, "cli.status", 30)
        await target.wait_mirrored()
        await target.save()
        # From another process, beside the running broker:
        script = Path(sys.executable).parent / "localbroker"
        result = await asyncio.to_thread(
            subprocess.run,
            [str(script), "sync", "status", "--data", str(data_dir), "--json"],
            capture_output=True,
            check=True,
        )
        status = json.loads(result.stdout)["memory"]
        assert (status["kind"], status["service"]) == ("memory", "shop")
        assert (status["connected"], status["running"]) == (True, True)
        assert (status["cursor"], status["backlog"]) == (30, 0)
        table = await invoke("sync", "status", "--data", str(data_dir))
        assert "memory" in table.output
        assert "connected" in table.output
    # Events published while no target runs show up as backlog.
    async with Broker(data_dir) as broker:
        await publish_n(broker, "cli.status", 5)
    result = await invoke("sync", "status", "--data", str(data_dir), "--json")
    status = json.loads(result.output)["memory"]
    assert (status["backlog"], status["running"]) == (5, False)


async def test_readme_example_runs(tmp_path: Path) -> None:
    """The README's example of MemoryTarget in a user's test, run as written."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("### In memory, for tests") :]
    code = section[
        section.index("```python\n") + 10 : section.index("\n```", section.index("```python"))
    ]
    namespace: dict[str, Any] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    await namespace["test_orders_are_mirrored_through_an_outage"](tmp_path)

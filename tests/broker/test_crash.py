"""Durability under real crashes: a child process publishing in a loop is SIGKILLed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest

from localbroker.log import CommitLog, verify

CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from localbroker import Broker

    async def main() -> None:
        async with Broker(sys.argv[1], segment_bytes=64 * 1024) as broker:
            n = 0
            while True:
                if n % 3 == 0:
                    results = await broker.publish_many(
                        [__import__("localbroker").GenericEvent(topic="crash.test", n=n + i) for i in range(5)]
                    )
                    n += 5
                else:
                    results = [await broker.publish("crash.test", {"n": n})]
                    n += 1
                for r in results:
                    sys.stdout.write(f"{r.id} {r.offset}\\n")
                sys.stdout.flush()

    asyncio.run(main())
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("kill_after", [0.7, 1.3])
def test_sigkill_mid_publish_loses_no_confirmed_event(tmp_path: Path, kill_after: float) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[2],
    )
    deadline = time.monotonic() + 20
    # Wait for the child to be publishing, then kill it without warning.
    assert child.stdout is not None
    first = child.stdout.readline()
    assert first, child.stderr.read().decode() if child.stderr else "child died"
    time.sleep(kill_after)
    os.kill(child.pid, signal.SIGKILL)
    rest, _ = child.communicate(timeout=max(1, deadline - time.monotonic()))
    confirmed = [line.split() for line in (first + rest).decode().splitlines() if line.strip()]
    assert len(confirmed) > 100, "the child published too little to test anything"

    with CommitLog(tmp_path / "log") as log:
        stored: list[tuple[int, str]] = []
        offset = log.start_offset
        while offset < log.next_offset:
            for record in log.read(offset, max_records=5000):
                stored.append((record.offset, orjson.loads(record.payload)["id"]))
                offset = record.offset + 1
    counts = Counter(event_id for _, event_id in stored)
    assert max(counts.values()) == 1, "an event is stored twice"
    by_id = {event_id: offset for offset, event_id in stored}
    for event_id, offset in confirmed:
        assert by_id.get(event_id) == int(offset), f"confirmed event {event_id} lost or moved"
    assert [o for o, _ in stored] == list(range(len(stored)))
    report = verify(tmp_path / "log")
    assert report.ok, report.problems
    assert report.records == len(stored)

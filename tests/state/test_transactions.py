"""One logical change of broker state is one transaction, whoever else writes meanwhile."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from localbroker.state.store import StateStore

# A failure record and a flush of positions, as the broker's coroutines issue them on the
# shared connection; the process is SIGKILLed the moment the flush returns.
KILLED_MID_CHANGE = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    from pathlib import Path
    from localbroker.state.store import StateStore

    async def main() -> None:
        store = await StateStore.open(Path(sys.argv[1]), create=True)
        state = await store.create_subscriber("failing", ["work.item"], 0)
        failure = asyncio.create_task(
            store.record_failure(
                subscriber="failing", offset=0, event_id="e0", topic="work.item",
                correlation_id="e0", attempt=2, kind="error", error_type="ValueError",
                message="always", traceback="...", dead=True,
            )
        )
        await asyncio.sleep(0)  # the failure record has begun
        await store.save_subscribers([state], os.getpid())
        os.kill(os.getpid(), signal.SIGKILL)
        await failure

    asyncio.run(main())
    """
)


def test_a_flush_never_commits_half_of_a_failure_record(tmp_path: Path) -> None:
    """Issue 9, item 1: the flush loop's commit used to land inside ``record_failure``."""
    path = tmp_path / "state.db"
    child = subprocess.run(
        [sys.executable, "-c", KILLED_MID_CHANGE, str(path)],
        capture_output=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()
    with sqlite3.connect(path) as db:
        deliveries = db.execute('SELECT "offset", status FROM deliveries').fetchall()
        dlq = db.execute('SELECT "offset", status FROM dlq').fetchall()
        errors = db.execute('SELECT "offset", attempt FROM errors').fetchall()
    # All of the failure record or none of it; never "dead" without its DLQ entry.
    assert (deliveries, dlq, errors) in [
        ([], [], []),
        ([(0, "dead")], [(0, "dead")], [(0, 2)]),
    ]


async def test_concurrent_writers_never_expose_half_a_change(tmp_path: Path) -> None:
    """A second connection (what survives a crash: committed data) never sees half a change."""
    store = await StateStore.open(tmp_path / "state.db", create=True)
    state = await store.create_subscriber("failing", ["work.item"], 0)
    stop = asyncio.Event()
    torn: list[tuple[int, int]] = []

    def observe() -> None:
        with sqlite3.connect(tmp_path / "state.db") as db:
            while not stop.is_set():
                torn.extend(
                    db.execute(
                        "SELECT d.\"offset\", d.tries FROM deliveries AS d WHERE d.status = 'dead'"
                        ' AND NOT EXISTS (SELECT 1 FROM dlq AS q WHERE q."offset" = d."offset")'
                    ).fetchall()
                )

    async def flush() -> None:
        while not stop.is_set():
            await store.save_subscribers([state], 1)

    async def fail(offset: int) -> None:
        for attempt in (1, 2):
            await store.record_failure(
                subscriber="failing",
                offset=offset,
                event_id=f"e{offset}",
                topic="work.item",
                correlation_id=None,
                attempt=attempt,
                kind="error",
                error_type="ValueError",
                message="always",
                traceback="...",
                dead=attempt == 2,
            )

    observer = asyncio.create_task(asyncio.to_thread(observe))
    flusher = asyncio.create_task(flush())
    try:
        for start in range(0, 200, 4):
            await asyncio.gather(*(fail(o) for o in range(start, start + 4)))
    finally:
        stop.set()
        await asyncio.gather(observer, flusher)
        await store.close()
    assert not torn, f"committed: dead deliveries without their DLQ entry {torn[:5]}"


async def test_a_failed_change_is_rolled_back_whole(tmp_path: Path) -> None:
    store = await StateStore.open(tmp_path / "state.db", create=True)

    async def change() -> None:
        async with store.transaction("test"):
            await store.set_value("first", 1)
            await store.update_patterns("a", ["y"])
            raise RuntimeError("in the middle")

    try:
        await store.create_subscriber("a", ["x"], 0)
        with pytest.raises(RuntimeError):
            await change()
        assert await store.get_value("first") is None
        state = await store.get_subscriber("a")
        assert state is not None
        assert state.patterns == ["x"]
        # The store works on afterwards.
        await store.set_value("second", 2)
        assert await store.get_value("second") == 2
    finally:
        await store.close()

"""A broker whose start fails releases what it opened: the process exits, the directory is free.

Issue 9, item 8. Each case runs in a child process: a leaked aiosqlite thread (not a daemon)
or a leaked writer lock only shows there, as a process that cannot exit.
"""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from localbroker import Broker
from tests.broker.events import Note

CHILD = textwrap.dedent(
    """
    import asyncio, sys, threading
    from localbroker import Broker

    class Failing:
        async def start(self, broker: Broker) -> None:
            raise RuntimeError("extension failed to start")

        async def close(self) -> None:
            pass

    async def main(data: str, case: str) -> None:
        broker = Broker(data, extensions=[Failing()] if case == "extension" else [])

        @broker.subscriber("note.added", name="email", start_from=5 if case == "start_from" else None)
        async def handle(event) -> None:
            pass

        try:
            await broker.start()
        except Exception as exc:
            print("start failed:", type(exc).__name__, exc, flush=True)
        else:
            raise SystemExit("the start did not fail")
        # The writer lock is free: another broker (without the failing part) starts here.
        async with Broker(data, on_missing_state="earliest"):
            print("second broker started", flush=True)

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    print("threads left:", sorted(t.name for t in threading.enumerate() if not t.daemon), flush=True)
    """
)


async def _prepare(data: Path, case: str) -> None:
    if case in ("damaged_row", "missing_state"):
        broker = Broker(data)
        broker.subscribe(_noop, "note.added", name="email")
        async with broker:
            await broker.publish(Note(n=1))
    if case == "damaged_row":
        with sqlite3.connect(data / "state.db") as db:
            db.execute("UPDATE subscribers SET done = CAST(X'FF' AS TEXT)")
    if case == "missing_state":
        (data / "state.db").unlink()


async def _noop(event: Note) -> None:
    pass


@pytest.mark.parametrize(
    ("case", "error"),
    [
        ("start_from", "ConfigurationError start_from offset 5 is outside the log"),
        ("damaged_row", "StateStoreError"),
        ("extension", "RuntimeError extension failed to start"),
        ("missing_state", "MissingStateError"),
    ],
)
def test_a_failed_start_lets_the_process_exit_and_frees_the_directory(
    tmp_path: Path, case: str, error: str
) -> None:
    data = tmp_path / "data"
    asyncio.run(_prepare(data, case))
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(data), case],
        capture_output=True,
        timeout=60,  # a leaked non-daemon thread keeps the child alive: this fails the test
        cwd=Path(__file__).resolve().parents[2],
    )
    out = child.stdout.decode()
    assert child.returncode == 0, out + child.stderr.decode()
    assert f"start failed: {error}" in out
    assert "second broker started" in out
    assert "threads left: ['MainThread']" in out

"""Damage to ``state.db``: errors name the file and the subscriber; ``state repair`` fixes rows.

Issue 9, item 7. The damage is real: rows rewritten with sqlite3, bytes overwritten.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from localbroker import Broker, RetryPolicy, StateStoreError
from localbroker.cli.main import cli
from tests.broker.events import Note
from tests.waiting import wait_until


async def run_broker(data: Path, publish: range = range(0)) -> list[int]:
    """Start a broker with subscriber ``email``, publish ``Note(n)`` for ``publish``, wait."""
    handled: list[int] = []
    broker = Broker(data, start_from="earliest")

    @broker.subscriber("note.added", name="email")
    async def email(event: Note) -> None:
        handled.append(event.n)

    async with broker:
        for n in publish:
            await broker.publish(Note(n=n))
        await broker.wait_idle()
    return handled


def damage(data: Path, sql: str) -> None:
    with sqlite3.connect(data / "state.db") as db:
        assert db.execute(sql).rowcount == 1


@pytest.mark.parametrize(
    ("column", "value", "says", "handled_after_repair"),
    [
        # Invalid UTF-8: SQLite itself cannot read the row back.
        ("done", "CAST(X'FF' AS TEXT)", "Could not decode to UTF-8 column 'done'", [5]),
        ("done", "'[1,'", "column 'done'", [5]),
        # Without its position the subscriber restarts at its first offset: nothing skipped.
        ("committed", "'x'", "column 'committed' holds 'x', not an integer", [0, 1, 2, 3, 4, 5]),
    ],
)
def test_a_damaged_subscriber_row_is_named_then_repaired(
    tmp_path: Path, column: str, value: str, says: str, handled_after_repair: list[int]
) -> None:
    data = tmp_path / "data"
    assert asyncio.run(run_broker(data, range(5))) == [0, 1, 2, 3, 4]
    damage(data, f"UPDATE subscribers SET {column} = {value} WHERE name = 'email'")

    with pytest.raises(StateStoreError) as info:
        asyncio.run(run_broker(data))
    error = info.value
    assert error.path == data / "state.db"
    assert error.subscriber == "email"
    message = str(error)
    assert str(data / "state.db") in message
    assert "subscriber 'email'" in message
    assert says in message
    assert "localbroker state repair DIR" in message
    assert isinstance(error.__cause__, sqlite3.Error | ValueError)

    # Tools beside the broker say the same.
    inspect = CliRunner().invoke(cli, ["inspect", str(data)])
    assert inspect.exit_code == 1
    assert "subscriber 'email'" in inspect.output

    repair = CliRunner().invoke(cli, ["state", "repair", str(data)])
    assert repair.exit_code == 0, repair.output
    assert f"subscriber 'email': column '{column}' was damaged" in repair.output
    assert sorted(asyncio.run(run_broker(data, range(5, 6)))) == handled_after_repair
    again = CliRunner().invoke(cli, ["state", "repair", str(data)])
    assert "nothing to repair" in again.output


def test_a_damaged_delivery_row_is_named_then_delivered_again(tmp_path: Path) -> None:
    data = tmp_path / "data"

    async def fail_once_then_stop() -> None:
        broker = Broker(data, start_from="earliest", retry=RetryPolicy(backoff_initial=60))

        @broker.subscriber("note.added", name="email")
        async def email(event: Note) -> None:
            raise ValueError("not yet")

        async with broker:
            await broker.publish(Note(n=0))
            await wait_until(
                lambda: broker.store.deliveries_since("email", 0), what="the failed try"
            )

    asyncio.run(fail_once_then_stop())
    damage(data, "UPDATE deliveries SET status = CAST(X'FF' AS TEXT)")
    with pytest.raises(StateStoreError, match=r"deliveries of subscriber 'email'.*state repair"):
        asyncio.run(run_broker(data))
    repair = CliRunner().invoke(cli, ["state", "repair", str(data)])
    assert "delivery of offset 0: column 'status' was damaged, set to 'retrying'" in repair.output
    assert asyncio.run(run_broker(data)) == [0]


def test_a_damaged_file_is_reported_with_what_to_do(tmp_path: Path) -> None:
    data = tmp_path / "data"
    asyncio.run(run_broker(data, range(3)))
    with (data / "state.db").open("r+b") as f:
        f.write(b"this is no SQLite header")
    with pytest.raises(StateStoreError) as info:
        asyncio.run(run_broker(data))
    assert str(data / "state.db") in str(info.value)
    assert "file is not a database" in str(info.value)
    assert "After damage" in str(info.value)
    repair = CliRunner().invoke(cli, ["state", "repair", str(data)])
    assert repair.exit_code == 1
    assert "file is not a database" in repair.output


def test_repair_refuses_while_a_broker_runs(tmp_path: Path) -> None:
    data = tmp_path / "data"

    async def repair_beside_a_broker() -> None:
        async with Broker(data):
            result = await asyncio.to_thread(
                CliRunner().invoke, cli, ["state", "repair", str(data)]
            )
        assert result.exit_code == 1
        assert "already open for writing by another process" in result.output

    asyncio.run(repair_beside_a_broker())

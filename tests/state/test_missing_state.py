"""A data directory whose log holds events but whose ``state.db`` is gone (issue 9, item 6).

The broker refuses to start until told how to recreate the subscribers, and says what the
choice costs; tools beside the broker never create an empty ``state.db`` that would hide it.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from click.testing import CliRunner

from localbroker import Broker, MissingStateError, RejectEvent
from localbroker.cli.main import cli
from tests.broker.events import Note

EVENTS = 50


async def run_broker(data: Path, publish: range = range(0), **options: object) -> list[int]:
    """Subscribers ``email`` (handles) and ``audit`` (rejects: DLQ); returns what email handled."""
    handled: list[int] = []
    broker = Broker(data, start_from="earliest", **options)

    @broker.subscriber("note.added", name="email")
    async def email(event: Note) -> None:
        handled.append(event.n)

    @broker.subscriber("note.added", name="audit")
    async def audit(event: Note) -> None:
        raise RejectEvent("never")

    async with broker:
        await broker.publish_many(Note(n=n) for n in publish)
        await broker.wait_idle()
    return handled


@pytest.fixture
def lost_state(tmp_path: Path) -> Path:
    """A directory whose subscribers handled 50 events, and whose state.db was then deleted."""
    data = tmp_path / "data"
    assert asyncio.run(run_broker(data, range(EVENTS))) == list(range(EVENTS))
    (data / "state.db").unlink()
    return data


def test_the_broker_refuses_to_start_and_says_what_to_choose(lost_state: Path) -> None:
    with pytest.raises(MissingStateError) as info:
        asyncio.run(run_broker(lost_state))
    message = str(info.value)
    assert str(lost_state / "state.db") in message
    assert f"holds offsets 0..{EVENTS - 1}" in message
    assert "on_missing_state" in message
    assert "LOCALBROKER_ON_MISSING_STATE" in message
    # Nothing was created that would let the next start pass silently.
    assert not (lost_state / "state.db").exists()
    with pytest.raises(MissingStateError):
        asyncio.run(run_broker(lost_state))


def test_an_empty_state_file_counts_as_missing(lost_state: Path) -> None:
    (lost_state / "state.db").touch()
    with pytest.raises(MissingStateError):
        asyncio.run(run_broker(lost_state))


def test_earliest_delivers_the_whole_log_again_and_says_so(
    lost_state: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="localbroker"):
        handled = asyncio.run(
            run_broker(lost_state, range(EVENTS, EVENTS + 1), on_missing_state="earliest")
        )
    assert handled == list(range(EVENTS + 1))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("state.db was missing" in w and "on_missing_state=earliest" in w for w in warnings)
    assert any(
        f"subscriber email recreated at offset 0: the {EVENTS} events at offsets 0..{EVENTS - 1} are delivered to it again"
        in w
        for w in warnings
    )
    # From now on it is an ordinary state.db: the next start needs no choice.
    assert asyncio.run(run_broker(lost_state)) == []


def test_latest_skips_the_log_and_names_how_many_events(
    lost_state: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOCALBROKER_ON_MISSING_STATE", "latest")
    with caplog.at_level(logging.WARNING, logger="localbroker"):
        handled = asyncio.run(run_broker(lost_state, range(EVENTS, EVENTS + 1)))
    assert handled == [EVENTS]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for name in ("email", "audit"):
        assert any(
            f"subscriber {name} recreated at the end of the log (offset {EVENTS}): it skips the "
            f"{EVENTS} events at offsets 0..{EVENTS - 1}" in w
            for w in warnings
        ), warnings


def test_tools_beside_the_broker_do_not_create_state(lost_state: Path) -> None:
    result = CliRunner().invoke(cli, ["dlq", "retry", "--all", "--data", str(lost_state)])
    assert result.exit_code == 1
    assert "no broker state" in result.output
    assert not (lost_state / "state.db").exists()
    with pytest.raises(MissingStateError):
        asyncio.run(run_broker(lost_state))


def test_a_new_directory_needs_no_choice(tmp_path: Path) -> None:
    assert asyncio.run(run_broker(tmp_path / "fresh", range(3))) == [0, 1, 2]

"""The CLI, through click's runner and as a real separate process beside a running broker."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import click
import orjson
import pytest
from click.testing import CliRunner

from localbroker import Broker, RetryPolicy
from localbroker.cli.main import cli
from localbroker.log import CommitLog
from tests.broker.damage import damage_record, stall_reader, write_notes
from tests.broker.events import CreateUser, Note, UserCreated


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables are not cut at 80 columns, so the assertions see whole cells."""
    from rich.console import Console

    import localbroker.cli.main as main

    monkeypatch.setattr(main, "console", Console(width=250))


def all_commands(group: click.Group, prefix: str = "") -> list[tuple[str, click.Command]]:
    found = []
    for name, command in group.commands.items():
        found.append((f"{prefix}{name}", command))
        if isinstance(command, click.Group):
            found.extend(all_commands(command, f"{prefix}{name} "))
    return found


@pytest.mark.parametrize(
    ("name", "command"), all_commands(cli), ids=lambda v: v if isinstance(v, str) else ""
)
def test_every_command_has_help_with_an_example(name: str, command: click.Command) -> None:
    assert command.help, f"{name} has no help text"
    assert f"Example: localbroker {name.split()[0]}" in command.help, name
    result = CliRunner().invoke(cli, [*name.split(), "--help"])
    assert result.exit_code == 0
    assert "Example:" in result.output


async def make_data(path: Path) -> tuple[str, str]:
    """A data directory with a chain and one DLQ entry; returns (command id, dead event id)."""
    broker = Broker(path, retry=RetryPolicy.immediate(), start_from="earliest")

    @broker.subscriber("user.create", name="users")
    async def create(cmd: CreateUser) -> None:
        await broker.publish(UserCreated(user_id="u1", name=cmd.name))

    @broker.subscriber("user.created", name="mailer", max_tries=2)
    async def mail(event: UserCreated) -> None:
        raise ConnectionError("smtp down")

    async with broker:
        cmd = await broker.publish(CreateUser(name="ann"))
        await broker.wait_idle()
        (entry,) = await broker.dlq.list()
    return cmd.id, entry.event_id


def test_inspect_chain_and_dlq_commands(tmp_path: Path) -> None:
    command_id, dead_id = asyncio.run(make_data(tmp_path))
    runner = CliRunner()

    result = runner.invoke(cli, ["inspect", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "00000000000000000000.log" in result.output
    assert "mailer" in result.output
    assert "users" in result.output

    result = runner.invoke(cli, ["chain", command_id, "--data", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "user.create" in result.output
    assert "user.created" in result.output
    assert "mailer: dlq, tries 2" in result.output

    result = runner.invoke(cli, ["dlq", "list", "--data", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert dead_id in result.output

    result = runner.invoke(cli, ["dlq", "show", "1", "--data", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "ConnectionError: smtp down" in result.output
    assert "attempt 2" in result.output

    result = runner.invoke(cli, ["tail", "user.>", "--data", str(tmp_path), "--from-beginning"])
    assert result.exit_code == 0, result.output
    lines = [orjson.loads(line) for line in result.output.splitlines()]
    assert [line["topic"] for line in lines] == ["user.create", "user.created"]


def test_cli_errors_name_the_problem(tmp_path: Path) -> None:
    asyncio.run(make_data(tmp_path))
    runner = CliRunner()
    result = runner.invoke(cli, ["dlq", "list", "--data", str(tmp_path), "--subscriber", "nobody"])
    assert result.exit_code == 1
    assert "unknown subscriber 'nobody'" in result.output
    result = runner.invoke(cli, ["dlq", "show", "42", "--data", str(tmp_path)])
    assert result.exit_code == 1
    assert "no DLQ entry 42" in result.output
    result = runner.invoke(cli, ["chain", "nope", "--data", str(tmp_path)])
    assert result.exit_code == 1
    assert "no events with correlation id 'nope'" in result.output
    result = runner.invoke(cli, ["inspect", str(tmp_path / "missing")])
    assert result.exit_code == 1
    assert "holds no localbroker log" in result.output


def test_verify_reports_the_corrupt_file_and_position(tmp_path: Path) -> None:
    asyncio.run(make_data(tmp_path))
    runner = CliRunner()
    result = runner.invoke(cli, ["verify", str(tmp_path)])
    assert result.exit_code == 0
    assert "ok" in result.output
    segment = tmp_path / "log" / "00000000000000000000.log"
    data = bytearray(segment.read_bytes())
    data[40] ^= 0xFF
    segment.write_bytes(bytes(data))
    result = runner.invoke(cli, ["verify", str(tmp_path)])
    assert result.exit_code == 1
    assert "00000000000000000000.log" in result.output
    assert "problem" in result.output


def test_tail_and_inspect_read_up_to_a_torn_tail_and_name_the_torn_record(tmp_path: Path) -> None:
    # Issue 9, item 5: the last record cut mid-way after a clean close. tail used to print
    # nothing and exit 1, naming the checkpoint's position instead of the torn record's.
    asyncio.run(write_notes(tmp_path, 20, segment_bytes=2**20))
    (segment,) = (tmp_path / "log").glob("*.log")
    with CommitLog(tmp_path / "log", readonly=True) as log:
        last = log.read(19)[0]
    torn_at = segment.stat().st_size - (25 + len(last.payload))
    os.truncate(segment, torn_at + 30)
    runner = CliRunner()
    result = runner.invoke(cli, ["tail", "--data", str(tmp_path), "--from-beginning"])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.startswith("{")]
    assert [orjson.loads(line)["data"]["n"] for line in lines] == list(range(19))
    assert f"{segment} at byte {torn_at} (offset 19)" in result.output
    result = runner.invoke(cli, ["inspect", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert f"log damaged: corrupt record in {segment} at byte {torn_at} (offset 19)" in (
        result.output.replace("\n", "")
    )


def test_inspect_shows_a_stalled_subscriber_and_repair_fixes_it(tmp_path: Path) -> None:
    asyncio.run(write_notes(tmp_path))
    damage = damage_record(tmp_path, 50)
    assert asyncio.run(stall_reader(tmp_path)) == list(range(50))
    runner = CliRunner()
    result = runner.invoke(cli, ["inspect", str(tmp_path)])
    assert result.exit_code == 0, result.output
    output = result.output.replace("\n", "")
    assert "stalled at 50" in output
    assert f"subscriber reader stalled at offset 50: corrupt record in {damage.named()}" in output

    result = runner.invoke(cli, ["repair", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "lost offsets 50..50 (1)" in result.output
    result = runner.invoke(cli, ["inspect", str(tmp_path)])
    assert "stalled at" not in result.output
    assert "lost offsets 50..50 (1)" in result.output
    result = runner.invoke(cli, ["repair", str(tmp_path)])
    assert "nothing to repair" in result.output


async def run_cli(*args: str, timeout: float = 20) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "localbroker.cli.main",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "COLUMNS": "200"},
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_dlq_retry_from_another_process_is_done_by_the_running_broker(tmp_path: Path) -> None:
    broker = Broker(
        tmp_path, retry=RetryPolicy.immediate(), start_from="earliest", control_poll_interval=0.1
    )
    fixed = False
    handled: list[int] = []

    @broker.subscriber("note.added", name="flaky", max_tries=1)
    async def flaky(event: Note) -> None:
        if not fixed:
            raise RuntimeError("not yet")
        handled.append(event.n)

    async with broker:
        await broker.publish(Note(n=1))
        await broker.wait_idle()
        (entry,) = await broker.dlq.list()
        fixed = True
        code, out = await run_cli("dlq", "retry", str(entry.id), "--data", str(tmp_path))
        assert code == 0, out
        assert f"retried: {entry.id}" in out
        await broker.wait_idle()
        assert handled == [1]
        assert (await broker.dlq.show(entry.id)).status == "resolved"
        code, out = await run_cli("dlq", "retry", str(entry.id), "--data", str(tmp_path))
        assert code == 1
        assert "is resolved, not dead" in out


async def test_dlq_retry_without_a_running_broker_is_done_by_the_cli(tmp_path: Path) -> None:
    await make_data(tmp_path)
    code, out = await run_cli(
        "dlq", "retry", "--all", "--subscriber", "mailer", "--data", str(tmp_path)
    )
    assert code == 0, out
    assert "retried: 1" in out
    got: list[str] = []
    broker = Broker(tmp_path)

    @broker.subscriber("user.created", name="mailer")
    async def mail(event: UserCreated) -> None:
        got.append(event.user_id)

    async with broker:
        await broker.wait_idle()
    assert got == ["u1"]


async def test_tail_follow_sees_appends_of_a_running_broker(tmp_path: Path) -> None:
    async with Broker(tmp_path) as broker:
        await broker.publish(Note(n=0))
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "localbroker.cli.main",
            "tail",
            "note.*",
            "--data",
            str(tmp_path),
            "-n",
            "0",
            "-f",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            assert proc.stdout is not None
            assert proc.stderr is not None
            # The child says where it starts once it knows; what is appended after that is its.
            # Importing alone takes about a second, much more on a loaded machine.
            ready = (await asyncio.wait_for(proc.stderr.readline(), 60)).decode()
            if not ready.startswith("following"):
                ready += (await asyncio.wait_for(proc.stderr.read(), 10)).decode()
            assert ready.startswith("following note.* from offset 1 "), ready
            for i in range(1, 4):
                await broker.publish(Note(n=i))
            await broker.publish("other.topic", {"x": 1})
            lines = [
                orjson.loads(await asyncio.wait_for(proc.stdout.readline(), 10)) for _ in range(3)
            ]
        finally:
            proc.kill()
            await proc.wait()
    assert [line["data"]["n"] for line in lines] == [1, 2, 3]

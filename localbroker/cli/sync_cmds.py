"""``localbroker sync ...``: the status of the sync targets (Redis Streams, MongoDB, PostgreSQL,
NATS JetStream, memory, ...).

Reads what the targets persist in ``state.db``, so it works beside a running broker and needs
none of the targets' extras.
"""

from __future__ import annotations

import time
from pathlib import Path

import click
import orjson
from rich.console import Console
from rich.table import Table

from localbroker.cli.common import data_option, run
from localbroker.view import BrokerView

__all__ = ["sync_group"]

console = Console()

#: A status older than this was written by a broker that is no longer running the target.
STALE_SECONDS = 5.0


@click.group("sync")
def sync_group() -> None:
    """Status of the sync targets (Redis Streams, MongoDB, PostgreSQL, NATS JetStream, ...).

    Example: localbroker sync status --data ./data
    """


@sync_group.command("status")
@data_option
@click.option("--json", "as_json", is_flag=True, help="Print the raw status as JSON.")
@run
async def status(data: Path, as_json: bool) -> None:
    """Per target: connected, disconnected or stalled (damage in the log at its cursor),
    cursor, backlog, throughput and last error.

    The backlog counts events in the log not yet confirmed by the target.

    Example: localbroker sync status --data ./data
    """
    async with BrokerView(data) as view:
        statuses = await view.sync_status()
        await view.refresh()
        end = view.log.next_offset
    now = time.time()
    for s in statuses.values():
        if s.get("mirrors"):  # recount against the log as it is now
            s["backlog"] = max(0, end - int(s["cursor"]))
        s["running"] = bool(s.get("running")) and now - float(s.get("updated", 0)) < STALE_SECONDS
    if as_json:
        click.echo(orjson.dumps(statuses, option=orjson.OPT_INDENT_2).decode())
        return
    if not statuses:
        console.print(f"no sync target has run on {data}")
        return
    table = Table(
        "target", "server", "state", "cursor", "backlog", "events/s", "last error", title="Sync"
    )
    for name, s in sorted(statuses.items()):
        if not s["running"]:
            state = "[dim]not running[/]"
        elif s.get("stalled"):
            state = "[red]stalled[/]"  # at its cursor; the last error says why
        elif s.get("connected"):
            state = "[green]connected[/]"
        else:
            state = "[red]disconnected[/]"
        table.add_row(
            name,
            str(s.get("target", "")),
            state,
            str(s.get("cursor", "-")),
            f"{s.get('backlog', 0):,}",
            f"{s.get('throughput', 0):,.0f}",
            str(s.get("last_error") or "-"),
        )
    console.print(table)

"""``localbroker`` commands. Each one calls the library; none holds logic of its own."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import click
import orjson
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from localbroker.cli import archive_cmds
from localbroker.cli.common import data_option, fmt_time, run
from localbroker.cli.dashboard_cmd import dashboard
from localbroker.cli.render import chain_tree, processes_table, subscribers_table
from localbroker.cli.schema_cmds import schema_group
from localbroker.cli.state_cmds import state_group
from localbroker.cli.sync_cmds import sync_group
from localbroker.errors import LocalBrokerError
from localbroker.log import verify as verify_log
from localbroker.log.repair import repair as repair_log
from localbroker.state.coordination import read_processes
from localbroker.view import BrokerView

__all__ = ["cli", "main"]

console = Console()


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log at INFO level.")
@click.version_option(package_name="localbroker")
def cli(verbose: bool) -> None:
    """localbroker: a local-first, embedded event broker.

    Example: localbroker inspect ./data
    """
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@cli.command()
@click.option(
    "--data",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Keep the demo's data here (default: a temporary directory).",
)
def demo(data: Path | None) -> None:
    """Run the blog demo: users, blogs and comments talking through events.

    Shows a command starting a chain, a fan-out, a failing handler going through its retries
    into the DLQ, and the DLQ entry retried once the handler is fixed.

    Example: localbroker demo --data ./demo-data
    """
    from localbroker.cli.demo import run_demo

    try:
        asyncio.run(run_demo(data, console))
    except LocalBrokerError as exc:
        raise click.ClickException(str(exc)) from exc


@cli.command()
@click.argument("pattern", default=">")
@data_option
@click.option(
    "-f",
    "--follow",
    is_flag=True,
    help="Keep printing new events as they are appended (stderr first says from which offset).",
)
@click.option("--from-beginning", is_flag=True, help="Start at the first event in the log.")
@click.option("--offset", type=int, default=None, help="Start at this offset.")
@click.option(
    "-n",
    "--last",
    type=int,
    default=10,
    show_default=True,
    help="Start this many events before the end.",
)
@run
async def tail(
    pattern: str, data: Path, follow: bool, from_beginning: bool, offset: int | None, last: int
) -> None:
    """Print events of topics matching PATTERN (wildcards * and >), one JSON line each.

    Example: localbroker tail 'user.>' --data ./data -f
    """
    async with BrokerView(data) as view:
        if from_beginning:
            start = view.log.start_offset
        elif offset is not None:
            start = offset
        else:
            start = max(view.log.start_offset, view.log.next_offset - last)
        if follow:
            # On stderr, so stdout stays JSON lines. From here on, whatever is appended is
            # printed: scripts can wait for this line before they publish.
            click.echo(f"following {pattern} from offset {start} (Ctrl-C to stop)", err=True)
        async for at, envelope in view.tail(pattern, start=start, follow=follow):
            click.echo(orjson.dumps({"offset": at, **envelope}).decode())


@cli.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path), required=False)
@click.option(
    "--data",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="LOCALBROKER_DATA_DIR",
    help="Same as DIRECTORY.",
)
@run
async def inspect(directory: Path | None, data: Path | None) -> None:
    """Show segments, offsets and each subscriber's lag, in-flight and DLQ counts, and the
    processes sharing the directory with the leases each holds.

    Example: localbroker inspect ./data
    """
    path = directory or data
    if path is None:
        raise click.UsageError("give the data directory: localbroker inspect DIR")
    async with BrokerView(path) as view:
        log = view.log
        console.print(
            f"[bold]{path}[/]  offsets {log.start_offset}..{log.next_offset}  "
            f"broker running: {'yes' if view.broker_running() else 'no'}"
        )
        segments = Table("segment", "offsets", "bytes", "sealed", "first", "last", title="Segments")
        for s in log.segments():
            segments.add_row(
                s.path.name,
                f"{s.base_offset}..{s.next_offset}",
                f"{s.size_bytes:,}",
                "yes" if s.sealed else "active",
                fmt_time(s.first_timestamp / 1000 if s.first_timestamp else None),
                fmt_time(s.last_timestamp / 1000 if s.last_timestamp else None),
            )
        console.print(segments)
        subscribers = await view.subscribers()
        console.print(subscribers_table(subscribers))
        console.print(processes_table(await read_processes(view.store)))
        # Problems last, in full (not cut to a table cell): they name files and bytes.
        if log.damage is not None:
            console.print(f"[red]log damaged:[/] {escape(str(log.damage))}")
        for sub in subscribers:
            if sub.stalled is not None:
                console.print(
                    f"[red]subscriber {escape(sub.name)} stalled[/] at offset {sub.position}: "
                    f"{escape(sub.stalled)}"
                )
        for gap in log.gaps:
            console.print(f"[yellow]lost {gap.describe()}:[/] {escape(gap.reason)}")


@cli.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
def verify(directory: Path) -> None:
    """Check the checksum and framing of every record of every segment.

    Exits with status 1 if anything is wrong, naming the file and byte position.

    Example: localbroker verify ./data
    """
    log_dir = directory / "log" if (directory / "log").is_dir() else directory
    with console.status("verifying..."):
        report = verify_log(log_dir)
    console.print(f"{report.segments} segments, {report.records:,} records, {report.bytes:,} bytes")
    for problem in report.problems:
        console.print(f"[red]problem:[/] {problem}")
    if not report.ok:
        raise SystemExit(1)
    console.print("[green]ok[/]")


@cli.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
def repair(directory: Path) -> None:
    """Cut damaged records out of the log, keeping their bytes and their offsets unused.

    For a log the broker refuses to open (CorruptLogError) or whose subscribers are stalled
    on a bad record. Stop the broker first. The damaged bytes go to log/quarantine/, their
    offsets are recorded as lost (log/gaps.jsonl) and never used again, the records after
    them stay. Prints every change and exactly which offsets were lost.

    Example: localbroker repair ./data
    """
    log_dir = directory / "log" if (directory / "log").is_dir() else directory
    try:
        report = repair_log(log_dir)
    except LocalBrokerError as exc:
        raise click.ClickException(str(exc)) from exc
    for action in report.actions:
        console.print(action, markup=False, highlight=False, soft_wrap=True)
    for gap in report.gaps:
        kept = f"; its bytes are in {log_dir / gap.quarantine}" if gap.quarantine else ""
        console.print(f"lost {gap.describe()}{kept}", markup=False, highlight=False, soft_wrap=True)
    if not report.changed:
        console.print("nothing to repair")
    elif not report.gaps:
        console.print("no offsets were lost")


@cli.command()
@click.argument("correlation_id")
@data_option
@run
async def chain(correlation_id: str, data: Path) -> None:
    """Print the chain started by a command as a tree, with each subscriber's state.

    Example: localbroker chain 01936d5e-... --data ./data
    """
    async with BrokerView(data) as view:
        result = await view.chain(correlation_id)
    console.print(chain_tree(result))


@cli.group()
def dlq() -> None:
    """List, show, retry and discard dead-lettered events.

    Example: localbroker dlq list --data ./data
    """


@dlq.command("list")
@data_option
@click.option("--subscriber", help="Only this subscriber's entries.")
@click.option("--topic", help="Only this topic's entries.")
@run
async def dlq_list(data: Path, subscriber: str | None, topic: str | None) -> None:
    """List dead-lettered events.

    Example: localbroker dlq list --data ./data --subscriber comment
    """
    async with BrokerView(data) as view:
        if subscriber:
            await view.store.require_subscriber(subscriber)
        entries = await view.store.dlq_entries(subscriber=subscriber, topic=topic)
    table = Table(
        "id", "subscriber", "topic", "event", "tries", "error", "dead at", title="Dead letter queue"
    )
    for e in entries:
        table.add_row(
            str(e.id), e.subscriber, e.topic, e.event_id, str(e.tries), e.error, fmt_time(e.dead_at)
        )
    console.print(table)


@dlq.command("show")
@click.argument("entry_id", type=int)
@data_option
@run
async def dlq_show(entry_id: int, data: Path) -> None:
    """Show one entry: the event and every attempt with its traceback.

    Example: localbroker dlq show 3 --data ./data
    """
    async with BrokerView(data) as view:
        entry = await view.store.dlq_entry(entry_id)
        record = view.log.get(entry.offset)
    console.print(
        f"[bold]DLQ entry {entry.id}[/]: {entry.subscriber} / {entry.topic} ({entry.status})"
    )
    console.print_json(record.payload.decode())
    for attempt in entry.attempts:
        console.print(
            f"[bold]attempt {attempt.attempt}[/] {fmt_time(attempt.time)} {attempt.kind}: {attempt.error}"
        )
        console.print(attempt.traceback, highlight=False, markup=False)


def _dlq_action(name: str, action: str, all_action: str, verb: str, help_text: str) -> None:
    @dlq.command(name)
    @click.argument("entry_id", type=int, required=False)
    @data_option
    @click.option(
        "--all", "all_", is_flag=True, help=f"{verb.capitalize()} every dead entry (filtered)."
    )
    @click.option("--subscriber", help="With --all: only this subscriber's entries.")
    @click.option("--topic", help="With --all: only this topic's entries.")
    @run
    async def command(
        entry_id: int | None, data: Path, all_: bool, subscriber: str | None, topic: str | None
    ) -> None:
        if (entry_id is None) == (not all_):
            raise click.UsageError("give an entry id, or --all")
        async with BrokerView(data) as view:
            if all_:
                ids = await view.dlq_action(all_action, {"subscriber": subscriber, "topic": topic})
            else:
                ids = await view.dlq_action(action, {"id": entry_id})
        console.print(f"{verb}: {', '.join(map(str, ids)) or 'nothing'}")

    command.help = (
        f"{help_text}\n\nA broker running on the directory carries it out within a second; "
        f"with none running, this command does.\n\nExample: localbroker dlq {name} 3 --data ./data"
    )


_dlq_action(
    "retry",
    "dlq.retry",
    "dlq.retry_all",
    "retried",
    "Send a DLQ entry back to the subscriber that failed it (and to no other).",
)
_dlq_action(
    "discard",
    "dlq.discard",
    "dlq.discard_all",
    "discarded",
    "Give up on a DLQ entry (it stays listed as discarded).",
)

for command in (
    archive_cmds.archive,
    archive_cmds.export,
    dashboard,
    schema_group,
    state_group,
    sync_group,
):
    cli.add_command(command)


def main() -> None:
    """Entry point of the ``localbroker`` console script."""
    cli()


if __name__ == "__main__":
    main()

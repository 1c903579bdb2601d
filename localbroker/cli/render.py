"""rich renderings shared by CLI commands."""

from __future__ import annotations

import time

from rich import box
from rich.markup import escape
from rich.table import Column, Table
from rich.text import Text
from rich.tree import Tree

from localbroker.broker.chains import Chain, ChainNode
from localbroker.cli.common import fmt_time
from localbroker.state.coordination import ProcessInfo
from localbroker.state.store import DLQEntry
from localbroker.view import SubscriberInfo

__all__ = ["chain_tree", "dlq_entry_table", "processes_table", "subscribers_table"]

COLOURS = {
    "done": "green",
    "pending": "yellow",
    "retrying": "yellow",
    "dlq": "red",
    "discarded": "dim",
}


def chain_tree(chain: Chain) -> Tree:
    """A chain as a rich tree: events, and under each its deliveries.

    An event's full id goes on a line of its own under its topic: topic, id and state on one
    line would not fit 80 columns two levels down.
    """
    tree = Tree(f"chain [bold]{escape(chain.correlation_id)}[/] ({len(chain)} events)")

    def add(parent: Tree, node: ChainNode) -> None:
        e = node.event
        branch = parent.add(
            f"[bold]{escape(e.topic)}[/] @{e.offset} [{COLOURS[node.state]}]{node.state}[/]\n"
            f"[dim]{escape(e.id)}[/]"
        )
        for d in node.deliveries:
            error = f", last error: {escape(d.last_error)}" if d.last_error else ""
            branch.add(
                f"{escape(d.subscriber)}: [{COLOURS[d.state]}]{d.state}[/], tries {d.tries}{error}"
            )
        for child in node.children:
            add(branch, child)

    for root in chain.roots:
        add(tree, root)
    return tree


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.2f}"


def _number(header: str) -> Column:
    return Column(header, justify="right", no_wrap=True)


def processes_table(processes: list[ProcessInfo]) -> Table:
    """The processes on a data directory: pid, host, started, heartbeat, the leases held."""
    table = Table("process", _number("pid"), "host", "started", "heartbeat", "holds")
    table.title = "Processes"
    now = time.time()
    for p in processes:
        table.add_row(
            p.id,
            str(p.pid),
            p.host,
            fmt_time(p.started),
            f"{now - p.heartbeat:.1f} s ago",
            ", ".join(p.roles) or "-",
        )
    return table


def subscribers_table(subscribers: list[SubscriberInfo]) -> Table:
    """Subscribers with their lag, in-flight, counters and handler times (and stalls).

    Laid out for 80 columns: each subscriber's topics go under its name, headers take two
    lines rather than get cut, and columns are set apart by spacing instead of rules.
    """
    table = Table(
        Column("subscriber\ntopics", overflow="fold"),
        _number("lag"),
        _number("in\nflight"),
        _number("processed"),
        _number("failures"),
        _number("DLQ"),
        _number("p50\nms"),
        _number("p99\nms"),
        Column("running"),
        title="Subscribers",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,
    )
    for sub in subscribers:
        topics = "".join(f"\n[dim]{escape(p)}[/]" for p in sub.patterns)
        stalled = f"\n[red]stalled at {sub.position}[/]" if sub.stalled is not None else ""
        table.add_row(
            f"[bold]{escape(sub.name)}[/]{stalled}{topics}",
            str(sub.lag),
            str(sub.in_flight),
            str(sub.processed),
            str(sub.failures),
            str(sub.dlq),
            _ms(sub.handler_p50),
            _ms(sub.handler_p99),
            f"pid {sub.pid}" if sub.running else "no",
        )
    return table


def dlq_entry_table(entry: DLQEntry) -> Table:
    """One DLQ entry as a two-column table (field, value), narrow enough for 80 columns."""
    table = Table(show_header=False, title=f"DLQ entry {entry.id}")
    for field, value in (
        ("subscriber", entry.subscriber),
        ("event", f"{entry.event_id}\n{entry.topic} @{entry.offset}"),
        ("chain", entry.correlation_id or "-"),
        ("tries", str(entry.tries)),
        ("last error", entry.error),
        ("status", entry.status),
        ("dead at", fmt_time(entry.dead_at)),
    ):
        table.add_row(field, Text(value))  # Text: an error message is not markup
    return table

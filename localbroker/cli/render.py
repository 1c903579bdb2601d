"""rich renderings shared by CLI commands."""

from __future__ import annotations

from rich.table import Table
from rich.tree import Tree

from localbroker.broker.chains import Chain, ChainNode
from localbroker.view import SubscriberInfo

__all__ = ["chain_tree", "subscribers_table"]

COLOURS = {
    "done": "green",
    "pending": "yellow",
    "retrying": "yellow",
    "dlq": "red",
    "discarded": "dim",
}


def chain_tree(chain: Chain) -> Tree:
    """A chain as a rich tree: events, and under each its deliveries."""
    tree = Tree(f"chain [bold]{chain.correlation_id}[/] ({len(chain)} events)")

    def add(parent: Tree, node: ChainNode) -> None:
        e = node.event
        branch = parent.add(
            f"[bold]{e.topic}[/] {e.id} @{e.offset} [{COLOURS[node.state]}]{node.state}[/]"
        )
        for d in node.deliveries:
            error = f" - {d.last_error}" if d.last_error else ""
            branch.add(f"{d.subscriber}: [{COLOURS[d.state]}]{d.state}[/], tries {d.tries}{error}")
        for child in node.children:
            add(branch, child)

    for root in chain.roots:
        add(tree, root)
    return tree


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.2f} ms"


def subscribers_table(subscribers: list[SubscriberInfo]) -> Table:
    """Subscribers with their lag, in-flight, counters and handler times."""
    table = Table(
        "subscriber",
        "topics",
        "committed",
        "lag",
        "in flight",
        "processed",
        "failures",
        "DLQ",
        "p50",
        "p99",
        "running",
        title="Subscribers",
    )
    for sub in subscribers:
        table.add_row(
            sub.name,
            " ".join(sub.patterns),
            str(sub.committed),
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

"""``localbroker state ...``: checking and repairing ``state.db``."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console

from localbroker.cli.common import run
from localbroker.state.repair import repair_state

__all__ = ["state_group"]

console = Console()


@click.group("state")
def state_group() -> None:
    """Repair state.db (subscriber positions, deliveries, the DLQ) after damage.

    Example: localbroker state repair ./data
    """


@state_group.command("repair")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@run
async def repair(directory: Path) -> None:
    """Reset damaged values in state.db to ones that skip nothing, printing each change.

    A damaged position restarts the subscriber at its first offset, lost in-flight offsets
    and unreadable delivery states are delivered again, counters restart at 0. Stop the
    broker first. Damage to the file itself is reported with how to recover it.

    Example: localbroker state repair ./data
    """
    fixes = await repair_state(directory)
    for fix in fixes:
        console.print(fix, markup=False, highlight=False, soft_wrap=True)
    console.print(f"{len(fixes)} damaged values repaired" if fixes else "nothing to repair")

"""The shared renderings at 80 columns, with what other commands give them (not the demo's)."""

from __future__ import annotations

import io
from pathlib import Path

from rich.cells import cell_len
from rich.console import Console

from localbroker import Broker, RetryPolicy
from localbroker.cli.render import chain_tree, dlq_entry_table, subscribers_table
from localbroker.view import BrokerView
from tests.broker.events import CreateUser, UserCreated, UserRenamed

LONG_NAME = "tests.cli.test_render.a_handler_whose_default_name_is_long"


def render(renderable: object, width: int = 80) -> list[str]:
    console = Console(width=width, record=True, file=io.StringIO())
    console.print(renderable)
    return console.export_text().splitlines()


async def test_chain_subscribers_and_dlq_entry_fit_80_columns(tmp_path: Path) -> None:
    broker = Broker(tmp_path, retry=RetryPolicy.immediate())

    @broker.subscriber("user.create", name="users")
    async def create(cmd: CreateUser) -> None:
        await broker.publish(UserCreated(user_id="u1", name=cmd.name, key="u1"))

    @broker.subscriber("user.created", "user.renamed", name=LONG_NAME, max_tries=2)
    async def fail(event: UserCreated | UserRenamed) -> None:
        # Brackets as in rich markup, and longer than a line: printed as they are, wrapped.
        raise ValueError(f"[bold]not markup[/] {'and a long explanation ' * 4}of {event.name}")

    async with broker:
        cmd = await broker.publish(CreateUser(name="ann"))
        await broker.wait_idle()
    async with BrokerView(tmp_path) as view:
        chain = await view.chain(cmd.id)
        subscribers = await view.subscribers()
        (entry,) = await view.store.dlq_entries()

    tree = render(chain_tree(chain))
    table = render(subscribers_table(subscribers))
    dlq = render(dlq_entry_table(entry))
    for lines in (tree, table, dlq):
        assert all(cell_len(line) <= 80 for line in lines), "\n".join(lines)
        assert not any("…" in line for line in lines), "\n".join(lines)

    text = "\n".join(tree)
    # Full ids, each on its own line under its event's topic.
    assert f"└── user.create @0 done\n    {cmd.id}\n" in text
    assert f"{entry.event_id}\n" in text
    assert "users: done, tries 1" in text
    assert "ValueError('[bold]not markup[/] and a long" in text  # not taken as markup

    text = "\n".join(table)
    assert "processed" in text
    assert "failures" in text
    # A name too long for its column is folded onto the next lines, never cut.
    assert LONG_NAME in "".join(line.split(" ")[0] for line in table)
    assert "user.renamed" in text

    text = "\n".join(dlq)
    assert entry.event_id in text
    assert "[bold]not markup[/]" in text


async def test_subscribers_table_keeps_every_column_when_wide(tmp_path: Path) -> None:
    broker = Broker(tmp_path)

    @broker.subscriber("user.created", name="mailer")
    async def mail(event: UserCreated) -> None:
        pass

    async with broker:
        await broker.publish(UserCreated(user_id="u1", name="ann"))
        await broker.wait_idle()
    async with BrokerView(tmp_path) as view:
        lines = render(subscribers_table(await view.subscribers()), width=200)
    header = " ".join(lines[:3])
    for column in ("subscriber", "topics", "lag", "flight", "processed", "failures", "DLQ"):
        assert column in header, lines
    (row,) = [line for line in lines if line.startswith("mailer")]
    assert row.split()[:6] == ["mailer", "0", "0", "1", "0", "0"]

"""``localbroker demo``: a small blog backend whose modules talk through events.

Modules User, Blog and Comment live in one process. A ``CreateUser`` command starts a
chain; ``user.name_updated`` fans out to Blog and Comment; Comment fails on purpose on one
event, goes through its retries into the DLQ, and is retried from the DLQ once "fixed".
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from localbroker import Broker, Command, Event, RetryPolicy
from localbroker.cli.render import chain_tree, subscribers_table
from localbroker.view import BrokerView

__all__ = ["run_demo"]


class CreateUser(Command, topic="demo.user.create"):
    user_id: str
    name: str


class RenameUser(Command, topic="demo.user.rename"):
    user_id: str
    name: str


class UserCreated(Event, topic="demo.user.created"):
    user_id: str
    name: str


class UserNameUpdated(Event, topic="demo.user.name_updated"):
    user_id: str
    old_name: str
    name: str


class PostPublished(Event, topic="demo.blog.post_published"):
    post_id: str
    author_id: str
    title: str


class CommentAdded(Event, topic="demo.comment.added"):
    post_id: str
    author_id: str
    text: str


class BlogApp:
    """The three modules; each keeps its own read model, fed only by events."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.users: dict[str, str] = {}
        self.post_authors: dict[str, str] = {}
        self.comment_authors: dict[str, str] = {}
        self.comment_bug = True  # the Comment module's bug, "fixed" later in the demo
        b = broker

        @b.subscriber("demo.user.create", name="user")
        async def create_user(cmd: CreateUser) -> None:
            self.users[cmd.user_id] = cmd.name
            await b.publish(UserCreated(user_id=cmd.user_id, name=cmd.name, key=cmd.user_id))

        @b.subscriber("demo.user.rename", name="user-rename")
        async def rename_user(cmd: RenameUser) -> None:
            old = self.users.get(cmd.user_id, "?")
            self.users[cmd.user_id] = cmd.name
            await b.publish(
                UserNameUpdated(user_id=cmd.user_id, old_name=old, name=cmd.name, key=cmd.user_id)
            )

        @b.subscriber("demo.user.created", name="blog-welcome")
        async def first_post(event: UserCreated) -> None:
            self.post_authors[event.user_id] = event.name
            await b.publish(
                PostPublished(
                    post_id=f"p-{event.user_id}",
                    author_id=event.user_id,
                    title=f"Hello from {event.name}",
                )
            )

        @b.subscriber("demo.blog.post_published", name="comment-welcome")
        async def first_comment(event: PostPublished) -> None:
            await b.publish(CommentAdded(post_id=event.post_id, author_id="bot", text="Welcome!"))

        @b.subscriber("demo.user.name_updated", name="blog")
        async def blog_rename(event: UserNameUpdated) -> None:
            self.post_authors[event.user_id] = event.name

        @b.subscriber("demo.user.name_updated", name="comment")
        async def comment_rename(event: UserNameUpdated) -> None:
            if self.comment_bug and event.name.startswith("Bob"):
                raise ValueError(f"comment store rejects name {event.name!r}")
            self.comment_authors[event.user_id] = event.name


async def run_demo(data_dir: Path | None, console: Console) -> None:
    """Run the demo in ``data_dir`` (a temporary directory if None) and print what happens."""
    if data_dir is None:
        with tempfile.TemporaryDirectory(prefix="localbroker-demo-") as tmp:
            await _demo(Path(tmp), console)
    else:
        await _demo(data_dir, console)


async def _demo(data_dir: Path, console: Console) -> None:
    logging.getLogger("localbroker.delivery").setLevel(logging.WARNING)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="  [log] %(message)s")
    started = time.perf_counter()
    broker = Broker(
        data_dir,
        ack_timeout=1.0,
        max_tries=3,
        start_from="earliest",
        retry=RetryPolicy(backoff_initial=0.05, backoff_max=0.2),
    )
    app = BlogApp(broker)
    console.rule(f"localbroker demo in {data_dir}")
    async with broker:
        console.print("1. [bold]CreateUser[/] commands start chains (user -> blog post -> comment)")
        created = [
            await broker.publish(CreateUser(user_id=f"u{i}", name=n))
            for i, n in enumerate(["Ann", "Ben"])
        ]
        await broker.wait_idle()
        console.print(f"   users: {app.users}")
        console.print(chain_tree(await broker.chain(created[0].id)))

        console.print("2. [bold]RenameUser[/]: user.name_updated fans out to Blog and Comment;")
        console.print(
            "   Comment fails on purpose on the rename to 'Bobby' (3 tries, then the DLQ)"
        )
        await broker.publish(RenameUser(user_id="u0", name="Annie"))
        rename = await broker.publish(RenameUser(user_id="u1", name="Bobby"))
        await broker.wait_idle()
        entries = await broker.dlq.list()
        dlq = Table("id", "subscriber", "topic", "tries", "error", title="DLQ")
        for e in entries:
            dlq.add_row(str(e.id), e.subscriber, e.topic, str(e.tries), e.error)
        console.print(dlq)
        console.print(chain_tree(await broker.chain(rename.id)))

        console.print(
            "3. The Comment handler is fixed; the DLQ entry is retried, to 'comment' only"
        )
        app.comment_bug = False
        for entry in entries:
            await broker.dlq.retry(entry)
        await broker.wait_idle()
        console.print(f"   DLQ now holds {len(await broker.dlq.list())} entries")
        console.print(
            f"   blog authors: {app.post_authors}   comment authors: {app.comment_authors}"
        )
        console.print(chain_tree(await broker.chain(rename.id)))

    async with BrokerView(data_dir) as view:
        console.print(subscribers_table(await view.subscribers()))
        total = view.log.next_offset
    console.print(
        f"[bold green]done[/]: {total} events in the log, "
        f"{len(app.users)} users, took {time.perf_counter() - started:.1f} s"
    )

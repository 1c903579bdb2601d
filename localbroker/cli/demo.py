"""``localbroker demo``: the blog backend this project's design started from.

Three modules, User, Blog and Comment, live in one process. Each keeps its own read model and
is one subscriber of the broker, named after the module; they talk only through typed events.
Commands start chains (users, a first post, a comment). A user-name update fans out to Blog
and Comment; Comment's handler fails with ``Test Error!!`` on every try, is retried up to the
default ``max_tries`` and lands in the DLQ. Once the handler is "fixed", the DLQ entry is
retried to Comment only, while Blog, which handled the event the first time, is left alone.
"""

from __future__ import annotations

import abc
import collections
import contextlib
import dataclasses
import logging
import tempfile
import textwrap
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import ClassVar

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from localbroker import Broker, Command, Event, PublishResult, RetryPolicy
from localbroker.cli.render import chain_tree, dlq_entry_table, subscribers_table
from localbroker.state.store import DLQEntry
from localbroker.view import BrokerView

__all__ = ["run_demo"]

#: Demo-only timings, so the whole run takes about a second: a handler that hangs would be
#: cancelled after 2 s (not less: a durable publish on a busy disk must not time out), and the
#: five tries of the failing handler are spread over ~0.75 s. The library's defaults (5 s;
#: 0.1 s doubling up to 30 s) are left alone.
DEMO_ACK_TIMEOUT = 2.0
DEMO_RETRY = RetryPolicy(backoff_initial=0.05, backoff_multiplier=2.0, backoff_max=0.5)


# -- the events the modules exchange ----------------------------------------------------------


class CreateUser(Command, topic="user.create"):
    """Command: register a user."""

    user_id: str
    name: str


class UpdateUserName(Command, topic="user.update_name"):
    """Command: change a user's name."""

    user_id: str
    name: str


class UserCreated(Event, topic="user.created"):
    """A user was registered."""

    user_id: str
    name: str


class UserNameUpdated(Event, topic="user.name_updated"):
    """A user's name changed; every module showing it must update its copy."""

    user_id: str
    old_name: str
    name: str


class PublishPost(Command, topic="blog.publish_post"):
    """Command: publish a blog post."""

    post_id: str
    author_id: str
    title: str


class PostPublished(Event, topic="blog.post_published"):
    """A blog post was published (it can now be commented on)."""

    post_id: str
    author_id: str
    title: str


class AddComment(Command, topic="comment.add"):
    """Command: comment on a post."""

    comment_id: str
    post_id: str
    author_id: str
    text: str


class CommentAdded(Event, topic="comment.added"):
    """A comment was added to a post."""

    comment_id: str
    post_id: str
    author_id: str
    text: str


# -- the modules ------------------------------------------------------------------------------


class Module(abc.ABC):
    """A module of the blog: one subscriber named after it, with a read model of its own.

    Its ``handle`` takes the union of the classes it handles: the annotation is what tells
    the broker which class each topic is delivered as.
    """

    name: ClassVar[str]
    topics: ClassVar[tuple[str, ...]]
    handle: Callable[..., Awaitable[None]]
    """Apply one event or command to the read model (and publish what follows from it)."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.calls: collections.Counter[str] = collections.Counter()
        """Handler runs per topic, failed tries included: shows which module ran what."""
        broker.subscribe(self.handle, *self.topics, name=self.name)

    def count(self, event: Event) -> None:
        """Count a run, before handling, so that failed tries count too."""
        self.calls[event.topic] += 1

    @abc.abstractmethod
    def read_model(self) -> list[tuple[str, str]]:
        """The read model as rows of (what, contents), for printing."""


def _names(users: dict[str, str]) -> str:
    return ", ".join(f"{uid} {name}" for uid, name in sorted(users.items())) or "-"


class UserModule(Module):
    """Owns users: turns commands into ``user.created`` and ``user.name_updated``."""

    name = "user"
    topics = ("user.create", "user.update_name")

    def __init__(self, broker: Broker) -> None:
        self.users: dict[str, str] = {}
        super().__init__(broker)

    async def handle(self, event: CreateUser | UpdateUserName) -> None:
        self.count(event)
        match event:
            case CreateUser(user_id=uid, name=name):
                self.users[uid] = name
                # Keyed by user, so every module sees one user's events in order.
                await self.broker.publish(UserCreated(user_id=uid, name=name, key=uid))
            case UpdateUserName(user_id=uid, name=name):
                old = self.users[uid]
                self.users[uid] = name
                await self.broker.publish(
                    UserNameUpdated(user_id=uid, old_name=old, name=name, key=uid)
                )

    def read_model(self) -> list[tuple[str, str]]:
        return [("users", _names(self.users))]


@dataclasses.dataclass
class Post:
    """A post as the Blog module keeps it."""

    author_id: str
    title: str
    comment_ids: set[str] = dataclasses.field(default_factory=set)


class BlogModule(Module):
    """Owns posts; keeps its own copy of author names and counts comments."""

    name = "blog"
    topics = ("user.created", "user.name_updated", "blog.publish_post", "comment.added")

    def __init__(self, broker: Broker) -> None:
        self.authors: dict[str, str] = {}
        self.posts: dict[str, Post] = {}
        super().__init__(broker)

    async def handle(
        self, event: UserCreated | UserNameUpdated | PublishPost | CommentAdded
    ) -> None:
        self.count(event)
        match event:
            case UserCreated(user_id=uid, name=name) | UserNameUpdated(user_id=uid, name=name):
                self.authors[uid] = name
            case PublishPost(post_id=pid, author_id=author, title=title):
                self.posts[pid] = Post(author, title)
                await self.broker.publish(
                    PostPublished(post_id=pid, author_id=author, title=title, key=pid)
                )
            case CommentAdded(post_id=pid, comment_id=cid):
                # A set, not a counter: a redelivered event must not count twice.
                self.posts[pid].comment_ids.add(cid)

    def read_model(self) -> list[tuple[str, str]]:
        posts = ", ".join(
            f"{pid} {p.title!r} by {self.authors.get(p.author_id, p.author_id)}"
            f" ({len(p.comment_ids)} comment{'' if len(p.comment_ids) == 1 else 's'})"
            for pid, p in sorted(self.posts.items())
        )
        return [("authors", _names(self.authors)), ("posts", posts or "-")]


@dataclasses.dataclass
class PostComment:
    """A comment as the Comment module keeps it."""

    post_id: str
    author_id: str
    text: str


class CommentModule(Module):
    """Owns comments; keeps its own copy of user names and of the posts open to comments."""

    name = "comment"
    topics = ("user.created", "user.name_updated", "blog.post_published", "comment.add")

    def __init__(self, broker: Broker) -> None:
        self.users: dict[str, str] = {}
        self.posts: dict[str, str] = {}
        self.comments: dict[str, PostComment] = {}
        self.broken = True
        """The bug of the original scenario: a name update always fails. Fixed mid-demo."""
        super().__init__(broker)

    async def handle(
        self, event: UserCreated | UserNameUpdated | PostPublished | AddComment
    ) -> None:
        self.count(event)
        match event:
            case UserCreated(user_id=uid, name=name):
                self.users[uid] = name
            case UserNameUpdated(user_id=uid, name=name):
                if self.broken:
                    raise Exception("Test Error!!")  # the original scenario's failure
                self.users[uid] = name
            case PostPublished(post_id=pid, title=title):
                self.posts[pid] = title
            case AddComment(comment_id=cid, post_id=pid, author_id=author, text=text):
                self.comments[cid] = PostComment(pid, author, text)
                await self.broker.publish(
                    CommentAdded(comment_id=cid, post_id=pid, author_id=author, text=text, key=pid)
                )

    def read_model(self) -> list[tuple[str, str]]:
        comments = ", ".join(
            f"{cid} on {c.post_id} by {self.users.get(c.author_id, c.author_id)}: {c.text!r}"
            for cid, c in sorted(self.comments.items())
        )
        return [
            ("users", _names(self.users)),
            ("posts", ", ".join(sorted(self.posts)) or "-"),
            ("comments", comments or "-"),
        ]


# -- showing the broker's own log lines -------------------------------------------------------


class ConsoleLogHandler(logging.Handler):
    """Prints the broker's log records on the demo's console, wrapped to its width.

    Each record starts a line with the seconds since the demo started (so the growing
    backoff between tries shows); what does not fit continues on lines indented under the
    message. Ids are never split.
    """

    def __init__(self, console: Console, started: float) -> None:
        super().__init__()
        self.console = console
        self.started = started

    def emit(self, record: logging.LogRecord) -> None:
        try:
            prefix = f"{record.created - self.started:6.2f}s "
            if record.levelno >= logging.ERROR:
                prefix += f"{record.levelname} "
            lines = textwrap.wrap(
                record.getMessage(),
                width=max(self.console.width, 40),
                initial_indent=prefix,
                subsequent_indent=" " * len(prefix),
                break_long_words=False,
                break_on_hyphens=False,
            )
            style = "red" if record.levelno >= logging.WARNING else "dim"
            for line in lines:
                self.console.print(line, style=style, markup=False, highlight=False, soft_wrap=True)
        except Exception:
            self.handleError(record)


@contextlib.contextmanager
def broker_log_on(console: Console, started: float) -> Iterator[None]:
    """Route the ``localbroker`` loggers to ``console`` (and only there) while the demo runs."""
    logger = logging.getLogger("localbroker")
    handler = ConsoleLogHandler(console, started)
    propagate, level = logger.propagate, logger.level
    if logger.getEffectiveLevel() > logging.WARNING:
        # The Failed ... lines are warnings: they are the point of the demo.
        logger.setLevel(logging.WARNING)
    logger.addHandler(handler)
    logger.propagate = False  # once on the console is enough; not again on stderr
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
        logger.setLevel(level)


# -- the scenario -----------------------------------------------------------------------------


async def run_demo(data_dir: Path | None, console: Console) -> None:
    """Run the demo in ``data_dir`` (a temporary directory, removed after, if None)."""
    if data_dir is None:
        with tempfile.TemporaryDirectory(prefix="localbroker-demo-") as tmp:
            await _demo(Path(tmp), console, keep=False)
    else:
        await _demo(data_dir, console, keep=True)


def _read_models(modules: list[Module]) -> Table:
    table = Table.grid(padding=(0, 2))
    table.title = "Read models (each module's own, built from events only)"
    table.title_justify = "left"
    for module in modules:
        for i, (what, contents) in enumerate(module.read_model()):
            # Text, not markup: titles and comments are user content.
            table.add_row(module.name if i == 0 else "", what, Text(contents))
    return table


async def _demo(data_dir: Path, console: Console, *, keep: bool) -> None:
    started = time.time()
    broker = Broker(data_dir, ack_timeout=DEMO_ACK_TIMEOUT, retry=DEMO_RETRY)
    comment = CommentModule(broker)
    modules: list[Module] = [UserModule(broker), BlogModule(broker), comment]
    cfg = broker.config

    console.rule("localbroker demo: a blog backend")
    console.print(
        "Modules [bold]User[/], [bold]Blog[/] and [bold]Comment[/] each keep their own read "
        "model and talk only through typed events; each is a subscriber named after it."
    )
    console.print(
        f"data: {escape(str(data_dir))} ({'kept' if keep else 'temporary'}); "
        f"max_tries {cfg.max_tries}; "
        f"demo settings: ack_timeout {cfg.ack_timeout:g} s, backoff "
        f"{cfg.retry.backoff_initial:g} s x{cfg.retry.backoff_multiplier:g}",
        highlight=False,
    )
    with broker_log_on(console, started):
        async with broker:
            console.print()
            console.rule("1. Commands start chains", align="left")
            console.print(
                "user.create (Alice, Bob), blog.publish_post (Alice), comment.add (Bob). "
                "Each event carries the id of its command (correlation) and of its cause."
            )
            alice = await broker.publish(CreateUser(user_id="u1", name="Alice"))
            await broker.publish(CreateUser(user_id="u2", name="Bob"))
            await broker.wait_idle()
            await broker.publish(PublishPost(post_id="p1", author_id="u1", title="Hello, blog"))
            await broker.wait_idle()
            await broker.publish(
                AddComment(comment_id="c1", post_id="p1", author_id="u2", text="Nice post!")
            )
            await broker.wait_idle()
            console.print(chain_tree(await broker.chain(alice.id)))

            rename, entry = await _fan_out_and_fail(broker, console, comment)
            await _retry_from_dlq(broker, console, entry, modules)
            console.print(chain_tree(await broker.chain(rename.id)))

    console.print()
    console.rule("Summary", align="left")
    async with BrokerView(data_dir) as view:
        events = view.log.next_offset - view.log.start_offset
        subscribers = await view.subscribers()
    console.print(f"{events} events in the log", highlight=False)
    console.print(_read_models(modules))
    console.print(subscribers_table(subscribers))
    console.print(f"[bold green]done[/] in {time.time() - started:.1f} s", highlight=False)
    if keep:
        # soft_wrap: a command cut by a newline could not be pasted back into a shell.
        console.print("The data is kept; look at it again with:")
        for command in (
            f"localbroker inspect {data_dir}",
            f"localbroker chain {rename.correlation_id} --data {data_dir}",
            f"localbroker dashboard --data {data_dir}",
        ):
            console.print(f"  {command}", markup=False, highlight=False, soft_wrap=True)


async def _fan_out_and_fail(
    broker: Broker, console: Console, comment: CommentModule
) -> tuple[PublishResult, DLQEntry]:
    console.print()
    console.rule("2. A name update fans out; Comment fails", align="left")
    console.print(
        "user.update_name (Alice -> Alicia): User publishes user.name_updated, which Blog and "
        "Comment both subscribe to. Comment's handler raises Exception('Test Error!!') on "
        f"every try: {broker.config.max_tries} tries, each logged by the broker, then the DLQ.",
        highlight=False,
    )
    rename = await broker.publish(UpdateUserName(user_id="u1", name="Alicia"))
    await broker.wait_idle()
    # Only this run's entry: a kept data directory may hold entries of earlier runs.
    (entry,) = [
        e
        for e in await broker.dlq.list(subscriber=comment.name)
        if e.correlation_id == rename.correlation_id
    ]
    console.print(dlq_entry_table(entry))
    console.print(f"Comment's read model still has: {_names(comment.users)}", highlight=False)
    return rename, entry


async def _retry_from_dlq(
    broker: Broker, console: Console, entry: DLQEntry, modules: list[Module]
) -> None:
    console.print()
    console.rule("3. The handler is fixed; the DLQ entry is retried", align="left")
    topic = entry.topic
    before = {m.name: m.calls[topic] for m in modules if m.calls[topic]}
    comment = next(m for m in modules if isinstance(m, CommentModule))
    comment.broken = False
    console.print(
        f"broker.dlq.retry(entry {entry.id}) sends {topic} back to {entry.subscriber!r} only.",
        highlight=False,
    )
    await broker.dlq.retry(entry)
    await broker.wait_idle()
    entry = await broker.dlq.show(entry)
    console.print(f"DLQ entry {entry.id} is now {entry.status}.", highlight=False)
    console.print(f"Handler runs for {topic}, before -> after the retry:", highlight=False)
    for m in modules:
        if m.name in before:
            ran = m.calls[topic] - before[m.name]
            note = "not run again" if ran == 0 else f"ran {ran} more time{'s' * (ran > 1)}"
            console.print(
                f"  {m.name:<8} {before[m.name]} -> {m.calls[topic]}  ({note})", highlight=False
            )
    console.print(f"Comment's read model now has: {_names(comment.users)}", highlight=False)

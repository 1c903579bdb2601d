"""``localbroker demo`` as a new user runs it: its own process, in an 80-column terminal.

A separate process rather than click's runner: the demo declares event classes for topics
such as ``user.create``, and the topic registry is process-wide, so running it in the test
process would change how other tests' untyped handlers decode those topics.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from rich.cells import cell_len

from localbroker.view import BrokerView

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
# A log record: seconds since the start, the message, and its continuation lines, which are
# indented by exactly the width of that prefix.
LOG_RECORD = re.compile(r"^ *\d+\.\d\ds (?P<message>.*(?:\n {8}\S.*)*)", re.MULTILINE)
FAILED = re.compile(
    rf"Failed (?P<n>\d+) times, subscriber: (?P<subscriber>\S+), error: (?P<error>.*), "
    rf"event: (?P<event>{UUID}) \((?P<topic>[\w.]+)\)(?P<dlq> -> DLQ)?"
)


@dataclasses.dataclass(frozen=True)
class DemoRun:
    returncode: int
    stdout: str
    stderr: str
    cwd: Path

    @property
    def log_messages(self) -> list[str]:
        """The broker's log records as printed, each joined back into one line."""
        return [re.sub(r"\n {8}", " ", m["message"]) for m in LOG_RECORD.finditer(self.stdout)]

    def section(self, title: str) -> str:
        """The output from the line starting with ``title`` to the end."""
        match = re.search(rf"^{re.escape(title)}.*$", self.stdout, re.MULTILINE)
        assert match, f"no section {title!r} in:\n{self.stdout}"
        return self.stdout[match.start() :]


def run_demo(cwd: Path, *args: str) -> DemoRun:
    # The demo shows the library's defaults (max_tries 5): none may come from the environment.
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCALBROKER_")}
    env["COLUMNS"] = "80"
    proc = subprocess.run(
        [sys.executable, "-m", "localbroker.cli.main", "demo", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    return DemoRun(proc.returncode, proc.stdout, proc.stderr, cwd)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    """One run without --data, shared by the tests that read its output."""
    run = run_demo(tmp_path_factory.mktemp("demo"))
    assert run.returncode == 0, run.stdout + run.stderr
    return run


def test_exits_0_in_under_30_seconds_with_nothing_on_stderr(demo: DemoRun) -> None:
    assert demo.returncode == 0
    # The broker's log lines go to the console once, not a second time to stderr.
    assert demo.stderr == ""
    took = re.search(r"^done in (\d+\.\d) s$", demo.stdout, re.MULTILINE)
    assert took, demo.stdout
    assert float(took[1]) < 30


def test_no_line_is_wider_than_80_columns_and_nothing_is_cut(demo: DemoRun) -> None:
    wide = [line for line in demo.stdout.splitlines() if cell_len(line) > 80]
    assert not wide, "\n".join(wide)
    # rich squeezes a table that does not fit by cutting cells short with an ellipsis.
    assert "…" not in demo.stdout, demo.stdout


def test_comment_fails_five_times_then_goes_to_the_dlq(demo: DemoRun) -> None:
    failures = [m for m in map(FAILED.fullmatch, demo.log_messages) if m]
    # Only Comment fails, and only with the scenario's error, once per try, in order.
    assert [int(f["n"]) for f in failures] == [1, 2, 3, 4, 5], demo.stdout
    assert {f["subscriber"] for f in failures} == {"comment"}
    assert {f["error"] for f in failures} == {"Exception('Test Error!!')"}
    assert {f["topic"] for f in failures} == {"user.name_updated"}
    assert [bool(f["dlq"]) for f in failures] == [False, False, False, False, True]
    (event_id,) = {f["event"] for f in failures}

    # The DLQ entry is shown, for that event.
    entry = demo.section("2. A name update fans out")
    entry = entry[: entry.index("3. The handler is fixed")]
    assert re.search(r"^ +DLQ entry \d+", entry, re.MULTILINE), entry
    for field, value in [
        ("subscriber", "comment"),
        ("event", event_id),
        ("tries", "5"),
        ("last error", "Exception('Test Error!!')"),
        ("status", "dead"),
    ]:
        assert re.search(rf"│ {field} +│ {re.escape(value)} +│", entry), (field, entry)
    assert "Comment's read model still has: u1 Alice, u2 Bob" in entry


def test_the_dlq_retry_goes_to_comment_only_and_succeeds(demo: DemoRun) -> None:
    retried = demo.section("3. The handler is fixed")
    retried = retried[: retried.index("Summary")]
    assert re.search(r"^DLQ entry \d+ is now resolved\.$", retried, re.MULTILINE), retried
    # Blog handled the event before the DLQ; the retry must not run it again.
    assert re.search(r"^  blog +1 -> 1 +\(not run again\)$", retried, re.MULTILINE), retried
    assert re.search(r"^  comment +5 -> 6 +\(ran 1 more time\)$", retried, re.MULTILINE)
    assert "Comment's read model now has: u1 Alicia, u2 Bob" in retried
    # No sixth failure: the retried try succeeded.
    assert not any("Failed 6 times" in m for m in demo.log_messages)


def test_the_chain_tree_shows_both_deliveries(demo: DemoRun) -> None:
    retried = demo.section("3. The handler is fixed")
    tree = re.search(
        rf"^chain (?P<chain>{UUID}) \(2 events\)\n"
        rf"└── user\.update_name @\d+ done\n"
        rf" +(?P=chain)\n"
        rf" +├── user: done, tries 1\n"
        rf" +└── user\.name_updated @\d+ done\n"
        rf" +{UUID}\n"
        rf" +├── blog: done, tries 1\n"
        rf" +└── comment: done, tries 6, last error: Exception\('Test Error!!'\)\n",
        retried,
        re.MULTILINE,
    )
    assert tree, retried


def test_the_summary_shows_the_new_name_in_every_read_model(demo: DemoRun) -> None:
    summary = demo.section("Summary")
    assert re.search(r"^\d+ events in the log$", summary, re.MULTILINE)
    for module, what in [("user", "users"), ("blog", "authors"), ("comment", "users")]:
        assert re.search(rf"^{module} +{what} +u1 Alicia, u2 Bob", summary, re.MULTILINE), (
            module,
            summary,
        )
    assert re.search(r"^ +posts +p1 'Hello, blog' by Alicia \(1 comment\)", summary, re.M)
    # The subscribers table: the three modules, with Comment's five failures and no DLQ left.
    assert re.search(r"^comment +0 +0 +5 +5 +0 ", summary, re.MULTILINE), summary
    for name in ("user", "blog"):
        assert re.search(rf"^{name} +0 +0 +\d+ +0 +0 ", summary, re.MULTILINE), summary


def test_without_data_the_temporary_directory_is_removed(demo: DemoRun) -> None:
    used = re.search(r"^data: (\S+) \(temporary\)", demo.stdout, re.MULTILINE)
    assert used, demo.stdout
    assert not Path(used[1]).exists()


async def test_with_data_the_directory_is_kept_and_readable(tmp_path: Path) -> None:
    run = await asyncio.to_thread(run_demo, tmp_path, "--data", "data")
    assert run.returncode == 0, run.stdout + run.stderr
    wide = [line for line in run.stdout.splitlines() if cell_len(line) > 80]
    assert not wide, "\n".join(wide)
    chain = re.search(rf"^  localbroker chain ({UUID}) --data data$", run.stdout, re.MULTILINE)
    assert chain, run.stdout

    async with BrokerView(tmp_path / "data") as view:
        names = {s.name for s in await view.subscribers()}
        (entry,) = await view.store.dlq_entries(status=())
        tree = await view.chain(chain[1])
    assert names == {"user", "blog", "comment"}
    assert (entry.subscriber, entry.topic, entry.status) == (
        "comment",
        "user.name_updated",
        "resolved",
    )
    states = {d.subscriber: (d.state, d.tries) for _, n in tree.walk() for d in n.deliveries}
    assert states == {"user": ("done", 1), "blog": ("done", 1), "comment": ("done", 6)}

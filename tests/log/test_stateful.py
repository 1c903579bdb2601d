"""A random sequence of log operations checked against a list (hypothesis state machine)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from localbroker.log import CommitLog, Record, verify
from tests.log.helpers import crash

OPTIONS = {"segment_bytes": 400, "index_interval_bytes": 64}

payloads = st.binary(max_size=120)
batches = st.lists(st.tuples(st.integers(0, 2**40), payloads), max_size=8)


class LogMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="lb-stateful-"))
        self.directory = self.root / "log"
        self.log = CommitLog(self.directory, **OPTIONS).open()  # type: ignore[arg-type]
        self.reader = CommitLog(self.directory, readonly=True, **OPTIONS).open()  # type: ignore[arg-type]
        self.records: dict[int, tuple[int, bytes]] = {}
        self.start = 0
        self.end = 0

    @rule(records=batches)
    def append(self, records: list[tuple[int, bytes]]) -> None:
        assert self.log.append(records) == self.end
        for ts, data in records:
            self.records[self.end] = (ts, data)
            self.end += 1

    @rule()
    def roll(self) -> None:
        self.log.roll()

    @rule()
    def sync(self) -> None:
        assert self.log.sync() == self.end

    @rule(data=st.data())
    def delete_before(self, data: st.DataObject) -> None:
        offset = data.draw(st.integers(self.start, self.end + 1))
        deleted = self.log.delete_segments_before(offset)
        for info in deleted:
            assert info.sealed
            assert info.next_offset <= offset
        self.start = self.log.start_offset
        assert self.start <= max(offset, 0) or not deleted

    @rule()
    def reopen(self) -> None:
        self.log.close()
        self.log = CommitLog(self.directory, **OPTIONS).open()  # type: ignore[arg-type]

    @rule()
    def crash_and_reopen(self) -> None:
        # A killed process keeps everything that reached the page cache.
        crash(self.log)
        self.log = CommitLog(self.directory, **OPTIONS).open()  # type: ignore[arg-type]

    @precondition(lambda self: self.end > self.start)
    @rule(data=st.data(), max_records=st.integers(1, 20), max_bytes=st.integers(1, 2000))
    def read(self, data: st.DataObject, max_records: int, max_bytes: int) -> None:
        offset = data.draw(st.integers(self.start, self.end))
        got = self.log.read(offset, max_records, max_bytes)
        if offset == self.end:
            assert got == []
            return
        assert 1 <= len(got) <= max_records
        assert sum(25 + len(r.payload) for r in got[1:]) < max_bytes or len(got) == 1
        for i, record in enumerate(got):
            assert record == Record(offset + i, *self.records[offset + i])

    @rule()
    def follow(self) -> None:
        self.reader.refresh()
        assert self.reader.next_offset == self.end
        offset = self.reader.start_offset
        while records := self.reader.read(offset):
            for record in records:
                assert record == Record(record.offset, *self.records[record.offset])
            offset = records[-1].offset + 1
        assert offset == self.end

    @invariant()
    def offsets(self) -> None:
        assert (self.log.start_offset, self.log.next_offset) == (self.start, self.end)

    def teardown(self) -> None:
        self.log.close()
        self.reader.close()
        report = verify(self.directory)
        shutil.rmtree(self.root, ignore_errors=True)
        assert report.ok, report.problems


LogMachine.TestCase.settings = settings(max_examples=40, stateful_step_count=30, deadline=None)
TestLog = LogMachine.TestCase

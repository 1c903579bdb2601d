"""Several processes append to one log: real child processes, some of them SIGKILLed."""

from __future__ import annotations

import itertools
import random
import time
from collections import defaultdict
from pathlib import Path

import orjson
import pytest

from tests.children import Child
from tests.log.helpers import dense_records


class Writer(Child):
    """A ``tests.log.writer_child`` process; its acknowledgements go to a file."""

    def __init__(self, log_dir: Path, name: str, batches: int, out_dir: Path) -> None:
        super().__init__(
            out_dir / f"{name}.acks", "tests.log.writer_child", str(log_dir), name, str(batches)
        )

    def acks(self) -> list[tuple[str, int, int, int]]:
        """The acknowledged batches: (writer, batch, first offset, count)."""
        return [(w, int(b), int(f), int(n)) for w, b, f, n in self.lines()]

    def wait_for_acks(self, count: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.acks()) < count and self.process.poll() is None:
            assert time.monotonic() < deadline, f"{self.name} made no progress"
            time.sleep(0.005)


def check_log(log_dir: Path, acks: list[tuple[str, int, int, int]]) -> int:
    """Dense offsets, whole batches only, each acknowledged batch exactly once where it was
    acknowledged, ``verify`` clean. Returns how many records the log holds."""
    records = dense_records(log_dir)
    batches: dict[tuple[str, int], list[tuple[int, dict[str, object]]]] = defaultdict(list)
    for record in records:
        body = orjson.loads(record.payload)
        batches[body["w"], body["b"]].append((record.offset, body))
    for (writer, number), members in batches.items():
        first = members[0][0]
        count = members[0][1]["n"]
        assert [m[1]["i"] for m in members] == list(range(count)), (
            f"batch {number} of {writer} is not whole (or twice) in the log: {members}"
        )
        assert [m[0] for m in members] == list(range(first, first + count))
    for writer, number, first, count in acks:
        members = batches.get((writer, number))
        assert members is not None, f"acknowledged batch {number} of {writer} is missing"
        assert members[0][0] == first
        assert len(members) == count
    return len(records)  # dense from 0: the log end


@pytest.mark.slow
def test_four_processes_append_dense_offsets(tmp_path: Path) -> None:
    log_dir = tmp_path / "log"
    writers = [Writer(log_dir, f"w{i}", 500, tmp_path) for i in range(4)]
    assert [w.finish() for w in writers] == [0, 0, 0, 0]
    acks = [a for w in writers for a in w.acks()]
    assert len(acks) == 4 * 500
    end = check_log(log_dir, acks)
    assert end == sum(a[3] for a in acks)
    # The batches of different processes are interleaved, not one process after another.
    order = [a[0] for a in sorted(acks, key=lambda a: a[2])]
    switches = sum(1 for x, y in itertools.pairwise(order) if x != y)
    assert switches > 4


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_writers_sigkilled_at_random_moments_lose_nothing_acknowledged(
    tmp_path: Path, seed: int
) -> None:
    rng = random.Random(seed)
    log_dir = tmp_path / "log"
    live = [Writer(log_dir, f"w{i}", 100_000, tmp_path) for i in range(4)]
    done: list[Writer] = []
    for round_ in range(8):
        victim = rng.choice(live)
        victim.wait_for_acks(len(victim.acks()) + rng.randint(1, 60))
        victim.kill()
        live.remove(victim)
        done.append(victim)
        live.append(Writer(log_dir, f"r{round_}", 100_000, tmp_path))
    for writer in live:
        writer.wait_for_acks(len(writer.acks()) + 5)
        writer.kill()
        done.append(writer)
    acks = [a for w in done for a in w.acks()]
    assert len(acks) > 100
    end = check_log(log_dir, acks)
    assert end >= sum(a[3] for a in acks)

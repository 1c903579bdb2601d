"""The sparse offset index."""

from __future__ import annotations

import struct
from array import array
from pathlib import Path

from localbroker.log.index import OffsetIndex


def _index(tmp_path: Path, entries: list[tuple[int, int]]) -> OffsetIndex:
    index = OffsetIndex(tmp_path / "0.index")
    for rel, pos in entries:
        index.add(rel, pos)
    return index


def test_lookup_finds_the_entry_at_or_before(tmp_path: Path) -> None:
    index = _index(tmp_path, [(10, 4100), (20, 8200), (30, 12300)])
    assert index.lookup(0) == (0, 0)
    assert index.lookup(9) == (0, 0)
    assert index.lookup(10) == (10, 4100)
    assert index.lookup(19) == (10, 4100)
    assert index.lookup(20) == (20, 8200)
    assert index.lookup(10**6) == (30, 12300)
    assert index.last() == (30, 12300)
    assert index.count_at_or_before(8200) == 2
    assert index.count_at_or_before(8199) == 1


def test_file_format_is_big_endian_pairs(tmp_path: Path) -> None:
    index = _index(tmp_path, [(1, 2), (3, 400000)])
    index.write_file()
    assert index.path.read_bytes() == struct.pack(">IIII", 1, 2, 3, 400000)
    loaded, complete = OffsetIndex.load(index.path, log_size=10**6)
    assert complete
    assert list(zip(loaded.relative_offsets, loaded.positions, strict=True)) == [
        (1, 2),
        (3, 400000),
    ]


def test_append_mode_writes_entries(tmp_path: Path) -> None:
    index = _index(tmp_path, [(1, 100)])
    index.write_file()
    index.open_for_append()
    index.extend(array("I", [2, 200, 3, 300]))
    index.close()
    loaded, complete = OffsetIndex.load(index.path, log_size=1000)
    assert complete
    assert list(loaded.positions) == [100, 200, 300]


def test_load_keeps_only_a_plausible_prefix(tmp_path: Path) -> None:
    path = tmp_path / "0.index"
    index, complete = OffsetIndex.load(path, 100)  # missing
    assert (len(index), complete) == (0, False)
    # A torn last entry.
    path.write_bytes(struct.pack(">IIII", 1, 10, 2, 20) + b"\x00\x00\x00")
    index, complete = OffsetIndex.load(path, 100)
    assert not complete
    assert list(index.positions) == [10, 20]
    # Not increasing after the second entry.
    path.write_bytes(struct.pack(">IIIIII", 1, 10, 2, 20, 2, 30))
    index, complete = OffsetIndex.load(path, 100)
    assert not complete
    assert list(index.positions) == [10, 20]
    # Pointing past the end of the log.
    path.write_bytes(struct.pack(">IIII", 1, 10, 2, 200))
    index, complete = OffsetIndex.load(path, 100)
    assert not complete
    assert list(index.positions) == [10]
    assert len(index) == 1

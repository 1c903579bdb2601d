"""The record frame: encode/decode and the scanning iterator."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from localbroker.log.record import (
    HEADER_SIZE,
    Record,
    RecordError,
    decode_record,
    encode_record,
    find_record,
    iter_records,
)


def test_header_layout_matches_the_format_document() -> None:
    data = encode_record(7, 1_700_000_000_123, b'{"a":1}')
    size, crc, offset, timestamp, attributes = struct.unpack_from(">IIQqB", data)
    assert HEADER_SIZE == 25
    assert len(data) == 25 + 7
    assert size == 21 + 7
    assert crc == zlib.crc32(data[8:])
    assert (offset, timestamp, attributes) == (7, 1_700_000_000_123, 0)
    assert data[25:] == b'{"a":1}'


@given(
    offset=st.integers(0, 2**64 - 1),
    timestamp=st.integers(-(2**63), 2**63 - 1),
    payload=st.binary(max_size=2000),
)
def test_round_trip(offset: int, timestamp: int, payload: bytes) -> None:
    data = encode_record(offset, timestamp, payload)
    record, end = decode_record(b"junk" + data + b"more", 4)
    assert record == Record(offset, timestamp, payload)
    assert end == 4 + len(data)


@given(payload=st.binary(max_size=100), flip=st.integers(4, 10_000), bit=st.integers(0, 7))
def test_any_flipped_bit_after_the_size_field_fails_the_crc(
    payload: bytes, flip: int, bit: int
) -> None:
    data = bytearray(encode_record(3, 4, payload))
    flip %= len(data)
    if flip < 4:
        flip = 4
    data[flip] ^= 1 << bit
    with pytest.raises(RecordError, match="crc mismatch") as info:
        decode_record(data)
    assert not info.value.incomplete


def test_decode_short_buffers_are_incomplete() -> None:
    data = encode_record(0, 0, b"hello")
    for cut in range(len(data)):
        with pytest.raises(RecordError) as info:
            decode_record(data[:cut])
        assert info.value.incomplete
        assert info.value.position == 0


def test_size_field_smaller_than_a_header_is_bad() -> None:
    data = bytearray(encode_record(0, 0, b"hello"))
    data[0:4] = struct.pack(">I", 5)
    with pytest.raises(RecordError, match="smaller than a header") as info:
        decode_record(data)
    assert not info.value.incomplete


def _file(tmp_path: Path, data: bytes) -> int:
    path = tmp_path / "f.log"
    path.write_bytes(data)
    return os.open(path, os.O_RDONLY)


def test_iter_records_positions_and_offsets(tmp_path: Path) -> None:
    frames = [encode_record(10 + i, i, bytes([i]) * i) for i in range(50)]
    fd = _file(tmp_path, b"".join(frames))
    try:
        # A tiny chunk size exercises records straddling chunks.
        got = list(iter_records(fd, 0, sum(map(len, frames)), expected_offset=10, chunk_size=7))
    finally:
        os.close(fd)
    pos = 0
    for i, (p, end, rec) in enumerate(got):
        assert p == pos
        assert end == pos + len(frames[i])
        assert rec == Record(10 + i, i, bytes([i]) * i)
        pos = end
    assert len(got) == 50


def test_iter_records_checks_contiguous_offsets(tmp_path: Path) -> None:
    data = encode_record(0, 0, b"a") + encode_record(2, 0, b"b")
    fd = _file(tmp_path, data)
    try:
        with pytest.raises(RecordError, match="offset 2 where 1 was expected") as info:
            list(iter_records(fd, 0, len(data), expected_offset=0))
    finally:
        os.close(fd)
    assert info.value.position == 26


def test_iter_records_without_payloads(tmp_path: Path) -> None:
    data = encode_record(0, 5, b"abc")
    fd = _file(tmp_path, data)
    try:
        assert [r for _p, _e, r in iter_records(fd, 0, len(data), payloads=False)] == [
            Record(0, 5, b"")
        ]
    finally:
        os.close(fd)


@pytest.mark.parametrize("first", [0, 5, 2**32 - 3, 2**40 + 17])
@pytest.mark.parametrize(
    "damage",
    [b"\x00" * 5000, os.urandom(3000), b'{"torn": "xxxxx', b""],
    ids=["zeros", "random", "text", "none"],
)
def test_find_record_after_damage(tmp_path: Path, first: int, damage: bytes) -> None:
    good = [encode_record(first + i, 1, b'{"n": %d}' % i) for i in range(3)]
    path = tmp_path / "seg"
    # A bad record (offset `first`), damage, then records `first + 1` and on.
    bad = bytearray(good[0])
    bad[-2] ^= 0xFF
    path.write_bytes(bytes(bad) + damage + good[1] + good[2])
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        assert find_record(fd, 1, size, first) == (len(bad) + len(damage), first + 1)
        # Only the bad record and the damage: nothing valid follows.
        assert find_record(fd, 1, len(bad) + len(damage), first) is None
    finally:
        os.close(fd)

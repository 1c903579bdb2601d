"""Throughput of the commit log: python benchmarks/bench_log.py [DIR].

Appends 1M records of 200 bytes in batches of 64, reads them all back, reopens after a clean
close and after a simulated crash, then measures durable appends (one sync per batch).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

from localbroker.log import CommitLog, verify

N = 1_000_000
BATCH = 64
PAYLOAD = b'{"topic": "bench"}'.ljust(200, b" ")


def main() -> None:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="lb-bench-"))
    directory = root / "log"
    shutil.rmtree(directory, ignore_errors=True)
    ts = int(time.time() * 1000)
    batch = [(ts, PAYLOAD)] * BATCH

    log = CommitLog(directory).open()
    started = time.perf_counter()
    for _ in range(N // BATCH):
        log.append(batch)
    elapsed = time.perf_counter() - started
    count = log.next_offset
    print(f"append   {count:>9,} records {elapsed:6.2f} s  {count / elapsed:>12,.0f} records/s")

    started = time.perf_counter()
    log.sync()
    print(f"sync     {time.perf_counter() - started:6.3f} s")

    started = time.perf_counter()
    offset = read = 0
    while records := log.read(offset):
        read += len(records)
        offset = records[-1].offset + 1
    elapsed = time.perf_counter() - started
    print(f"read     {read:>9,} records {elapsed:6.2f} s  {read / elapsed:>12,.0f} records/s")
    log.close()

    started = time.perf_counter()
    with CommitLog(directory) as log:
        assert log.next_offset == count
    print(f"reopen after clean close   {(time.perf_counter() - started) * 1000:8.1f} ms")

    # A crash: 100k records appended after the last checkpoint, no close.
    log = CommitLog(directory).open()
    for _ in range(100_000 // BATCH):
        log.append(batch)
    log._release()  # what a killed process leaves behind: no sync, no checkpoint
    log._is_open = False
    started = time.perf_counter()
    with CommitLog(directory) as log:
        tail = log.next_offset - count
    elapsed = (time.perf_counter() - started) * 1000
    print(f"reopen after crash ({tail:,} records past the checkpoint) {elapsed:8.1f} ms")

    started = time.perf_counter()
    report = verify(directory)
    elapsed = time.perf_counter() - started
    print(f"verify   {report.records:>9,} records {elapsed:6.2f} s  ok={report.ok}")

    with CommitLog(directory) as log:
        started = time.perf_counter()
        batches = 0
        while time.perf_counter() - started < 3:
            log.append(batch)
            log.sync()
            batches += 1
        elapsed = time.perf_counter() - started
    print(
        f"durable  {batches * BATCH:>9,} records {elapsed:6.2f} s  "
        f"{batches * BATCH / elapsed:>12,.0f} records/s ({batches / elapsed:,.0f} fdatasync/s)"
    )
    shutil.rmtree(root if len(sys.argv) == 1 else directory, ignore_errors=True)


if __name__ == "__main__":
    main()

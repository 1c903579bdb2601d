"""A writer process for the several-writers tests: appends batches, prints each acknowledged one.

``python -m tests.log.writer_child LOG_DIR NAME BATCHES``: appends ``BATCHES`` batches of 1 to
5 records (each record's payload names the writer, the batch, its index and the batch size),
fsyncs each batch and then prints ``NAME BATCH FIRST_OFFSET COUNT``: that batch is acknowledged.
"""

from __future__ import annotations

import random
import sys

import orjson

from localbroker.log import CommitLog


def main() -> None:
    directory, name, batches = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rng = random.Random(name)
    with CommitLog(directory, segment_bytes=16 * 1024) as log:
        for b in range(batches):
            count = rng.randint(1, 5)
            records = [
                (b, orjson.dumps({"w": name, "b": b, "i": i, "n": count})) for i in range(count)
            ]
            first = log.append(records)
            log.sync()
            sys.stdout.write(f"{name} {b} {first} {count}\n")
            sys.stdout.flush()


if __name__ == "__main__":
    main()

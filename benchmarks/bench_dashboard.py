"""The dashboard's event list on a large index: one page, newest and deep, with filters.

Keyset pagination (``offset < before``) against the usual ``LIMIT ... OFFSET ...`` as the
baseline, on an ``index.db`` of 1M events (100k with ``--quick``).
Run: ``python -m benchmarks.bench_dashboard [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from localbroker.state.event_index import EventIndex, EventQuery, IndexedEvent

PAGE = 50
TOPICS = [
    "user.created",
    "user.renamed",
    "blog.post_created",
    "comment.added",
    "command.create_user",
]


def row(
    name: str, ms: float, baseline: str | None = None, base_ms: float | None = None
) -> dict[str, Any]:
    return {
        "name": name,
        "value": ms,
        "unit": "ms",
        "baseline": baseline,
        "baseline_value": base_ms,
    }


async def timed(fn: Callable[[], Awaitable[object]], repeat: int = 5) -> float:
    """Best of ``repeat`` runs, in milliseconds."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        await fn()
        best = min(best, time.perf_counter() - started)
    return best * 1000


async def run(quick: bool) -> list[dict[str, Any]]:
    n = 100_000 if quick else 1_000_000
    with tempfile.TemporaryDirectory(prefix="lb-bench-dash-") as tmp:
        index = await EventIndex.open(Path(tmp) / "index.db")
        now = time.time() - n / 1000
        for start in range(0, n, 50_000):
            await index.add(
                [
                    IndexedEvent(
                        i,
                        f"01936d5e-{i:012x}",
                        TOPICS[i % 5],
                        f"k{i % 10_000}",
                        now + i / 1000,
                        f"c{i // 4}",
                        None,
                    )
                    for i in range(start, min(n, start + 50_000))
                ]
            )

        async def offset_page(depth: int) -> None:
            async with index.db.execute(
                'SELECT * FROM events ORDER BY "offset" DESC LIMIT ? OFFSET ?', (PAGE, depth)
            ) as cur:
                await cur.fetchall()

        everything = EventQuery()
        deep = n // 2
        rows = [
            row(
                "dashboard: newest page",
                await timed(lambda: index.query(everything, before=n, limit=PAGE)),
            ),
            row(
                f"dashboard: page at depth {deep:,} (keyset)",
                await timed(lambda: index.query(everything, before=n - deep, limit=PAGE)),
                f"LIMIT/OFFSET {deep:,}",
                await timed(lambda: offset_page(deep)),
            ),
        ]
        for label, q in [
            ("topic user.*", EventQuery(topic="user.*")),
            ("topic *.added", EventQuery(topic="*.added")),
            ("key (1 in 10k)", EventQuery(key="k42")),
            ("correlation id", EventQuery(correlation_id=f"c{n // 8}")),
            ("last minute", EventQuery(since=now + n / 1000 - 60)),
        ]:
            rows.append(
                row(
                    f"dashboard: page, {label}",
                    await timed(lambda q=q: index.query(q, before=n, limit=PAGE)),
                )
            )
        await index.close()
        return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    for r in asyncio.run(run(parser.parse_args().quick)):
        base = (
            f"  (baseline {r['baseline']}: {r['baseline_value']:.2f} ms)" if r["baseline"] else ""
        )
        print(f"{r['name']:<45} {r['value']:8.2f} ms{base}")

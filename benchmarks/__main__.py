"""Run every benchmark: ``python -m benchmarks [--quick] [--only core,sync,...]``.

Prints a table (each figure with its ratio to the baseline measured in the same run) and
writes the rows as JSON to ``benchmarks/results/latest.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import platform
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

# bench_log.py runs on its own: python benchmarks/bench_log.py
AREAS = ["core", "sync", "archive", "dashboard", "testing"]


def print_rows(rows: list[dict[str, Any]], title: str = "localbroker benchmarks") -> None:
    table = Table("benchmark", "value", "unit", "baseline", "ratio", title=title)
    for r in rows:
        ratio = ""
        if r.get("baseline_value"):
            ratio = f"{r['value'] / r['baseline_value']:.2f}x"
        value = r["value"]
        shown = f"{value:,.0f}" if value >= 100 else f"{value:,.3f}"
        table.add_row(r["name"], shown, r["unit"], r.get("baseline") or "", ratio)
    Console().print(table)


def standalone(
    run: Callable[[bool], Awaitable[list[dict[str, Any]]]], description: str | None
) -> None:
    """``python -m benchmarks.bench_<area> [--quick]``: run one area and print its rows."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="smaller runs, for a smoke check")
    args = parser.parse_args()
    print_rows(asyncio.run(run(args.quick)))


async def run_all(quick: bool, only: list[str]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for area in only:
        try:
            module = importlib.import_module(f"benchmarks.bench_{area}")
        except ModuleNotFoundError:
            continue
        for r in await module.run(quick):
            rows.append({"area": area, **r})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller runs, for a smoke check")
    parser.add_argument("--only", default=",".join(AREAS), help="comma-separated areas")
    args = parser.parse_args()
    rows = asyncio.run(run_all(args.quick, args.only.split(",")))
    print_rows(rows)
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    meta = {
        "time": time.time(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "quick": args.quick,
    }
    (out / "latest.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()

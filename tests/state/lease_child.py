"""A child process for the lease tests: ``python -m tests.state.lease_child MODE STATE_DB ...``.

Modes:
- ``hold NAME LENGTH``: register, take lease NAME, print ``held <epoch>``, renew it while
  alive; on SIGCONT after a stop, try to renew and a fenced write, print what happened.
- ``contend NAME LENGTH SECONDS OUT``: loop for SECONDS: take the lease, hold it for a random
  while (renewing), make fenced writes under it, then release it or just stop renewing;
  append each hold ``epoch pid start end writes`` (monotonic clock) to OUT.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
import time
from pathlib import Path

from localbroker.errors import LeaseLostError
from localbroker.state.coordination import Coordination, Lease, ProcessIdentity
from localbroker.state.store import StateStore


async def open_coordination(db: Path, dead_after: float) -> Coordination:
    store = await StateStore.open(db, create=True)
    coordination = Coordination(
        store, ProcessIdentity.new(), lock_dir=db.parent / "processes", dead_after=dead_after
    )
    await coordination.register()
    return coordination


async def fenced_write(coordination: Coordination, lease: Lease) -> None:
    """Count a write under ``lease`` in kv, checked against the lease in the same transaction."""
    store = coordination.store
    async with store.transaction("fenced write"):
        await coordination.check(lease)
        key = f"writes.{lease.epoch}.{os.getpid()}"
        await store.set_value(key, (await store.get_value(key) or 0) + 1)


async def hold(db: Path, name: str, length: float) -> None:
    coordination = await open_coordination(db, dead_after=length)
    lease = await coordination.acquire(name, length=length)
    assert lease is not None
    print("held", lease.epoch, flush=True)
    resumed = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGCONT, resumed.set)
    while not resumed.is_set():
        renewed = await coordination.renew(lease, length=length)
        if renewed is None:
            break  # resumed after the freeze, the timeout below fired before the signal
        lease = renewed
        # Renew every fifth of the lease; a SIGSTOP freezes this loop mid-wait.
        try:
            async with asyncio.timeout(length / 5):
                await resumed.wait()
        except TimeoutError:
            pass
    renewed = await coordination.renew(lease, length=length)
    print("renewed" if renewed is not None else "lost", flush=True)
    try:
        await fenced_write(coordination, lease)
        print("wrote", flush=True)
    except LeaseLostError as exc:
        print("fenced", exc, flush=True)
    await coordination.unregister()
    await coordination.store.close()


async def contend(db: Path, name: str, length: float, seconds: float, out: Path) -> None:
    coordination = await open_coordination(db, dead_after=length)
    rng = random.Random(os.getpid())
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        started = time.monotonic()
        lease = await coordination.acquire(name, length=length)
        if lease is None:
            await asyncio.sleep(rng.uniform(0.005, 0.03))
            continue
        got = time.monotonic()
        # Taken for 80% of the length measured from before the take: what the broker does.
        valid_until = started + 0.8 * length
        writes = 0
        hold_until = time.monotonic() + rng.uniform(0.05, 0.4)
        while time.monotonic() < min(hold_until, valid_until):
            await fenced_write(coordination, lease)
            writes += 1
            renew_from = time.monotonic()
            renewed = await coordination.renew(lease, length=length)
            if renewed is None:
                break
            lease, valid_until = renewed, renew_from + 0.8 * length
            await asyncio.sleep(0.01)
        finished = min(time.monotonic(), valid_until)
        with out.open("a") as f:
            f.write(f"{lease.epoch} {os.getpid()} {got:.6f} {finished:.6f} {writes}\n")
        if rng.random() < 0.5:
            await coordination.release(lease)
        else:
            # Stop renewing without releasing: the others must wait for it to expire.
            await asyncio.sleep(length)
    await coordination.unregister()
    await coordination.store.close()


def main() -> None:
    mode, db = sys.argv[1], Path(sys.argv[2])
    if mode == "hold":
        asyncio.run(hold(db, sys.argv[3], float(sys.argv[4])))
    else:
        asyncio.run(
            contend(db, sys.argv[3], float(sys.argv[4]), float(sys.argv[5]), Path(sys.argv[6]))
        )


if __name__ == "__main__":
    main()

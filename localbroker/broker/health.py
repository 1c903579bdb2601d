"""Health: whether every subscriber can read on, and what the log has lost.

``Broker.health()`` reports what the running broker knows; ``BrokerView.health()`` (the CLI,
the dashboard) works it out from the files, by reading each subscriber's next record.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from localbroker.log import Gap
from localbroker.state.coordination import ProcessInfo

__all__ = ["Health", "HealthState", "Stall", "SubscriberHealth"]

HealthState = Literal["ok", "lagging", "stalled"]


@dataclass(frozen=True, slots=True)
class Stall:
    """Why a subscriber cannot read on."""

    #: The offset it cannot read.
    position: int
    #: The error, naming file, byte and offset for damage in the log.
    cause: str
    #: Seconds since the epoch when it stalled (None: not known, e.g. seen from outside).
    since: float | None = None


@dataclass(frozen=True, slots=True)
class SubscriberHealth:
    """One subscriber: ``ok`` (caught up), ``lagging`` (events to handle) or ``stalled``."""

    name: str
    state: HealthState
    #: The next offset it reads.
    position: int
    #: Offsets in the log after its committed one (events of other topics included).
    lag: int
    #: Set when ``state == "stalled"``.
    stall: Stall | None = None

    @classmethod
    def of(cls, name: str, position: int, lag: int, stall: Stall | None) -> SubscriberHealth:
        """The state follows from the stall and the lag."""
        state: HealthState = "stalled" if stall is not None else "lagging" if lag else "ok"
        return cls(name, state, position, lag, stall)


@dataclass(frozen=True, slots=True)
class Health:
    """The broker's health. ``ok`` is false while a subscriber is stalled.

    Example::

        health = broker.health()
        if not health.ok:
            for sub in health.stalled:
                print(sub.name, sub.stall.cause)

    ``lost`` lists offsets lost earlier (cut out by ``localbroker repair``, or missing after
    a crash); they are history and do not make ``ok`` false. ``readers`` lists the other
    readers of the log that are stalled now, by name (``sync target redis``: a mirror that
    cannot read the log at its cursor). ``processes`` are those sharing the data directory
    (pid, host, started, heartbeat), each with the leases it holds (``roles``: singletons
    such as ``indexer``, and ``subscriber:<name>`` queues). ``Broker.health()`` lists its
    own subscribers (those whose queue runs in this process).
    """

    subscribers: dict[str, SubscriberHealth] = field(default_factory=dict)
    lost: list[Gap] = field(default_factory=list)
    readers: dict[str, Stall] = field(default_factory=dict)
    processes: list[ProcessInfo] = field(default_factory=list)

    @classmethod
    def of(
        cls,
        subscribers: Iterable[SubscriberHealth],
        lost: list[Gap],
        readers: dict[str, Stall] | None = None,
        processes: Iterable[ProcessInfo] = (),
    ) -> Health:
        """Health from each subscriber's (and the stalls of other readers)."""
        return cls(
            {s.name: s for s in subscribers}, list(lost), dict(readers or {}), list(processes)
        )

    @property
    def ok(self) -> bool:
        """No subscriber and no other reader of the log is stalled."""
        return not self.stalled and not self.readers

    @property
    def stalled(self) -> list[SubscriberHealth]:
        """The subscribers that cannot read on."""
        return [s for s in self.subscribers.values() if s.stall is not None]

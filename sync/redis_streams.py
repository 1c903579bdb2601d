"""Mirror the local log to Redis Streams, and consume other services' streams into it.

Outbound, one stream per topic (``<stream_prefix><topic>``, fields in
:mod:`localbroker.sync.stream_format`). Exactly once: each batch is one MULTI/EXEC transaction
holding its XADDs and a ``SET <state_prefix>mirrored:<producer> <last offset>``, so the entries
and the watermark of this data directory land together or not at all. After a crash or an
outage the mirror resumes from ``max(saved cursor, watermark + 1)``: a batch Redis applied but
whose reply was lost is not sent again. Entry ids are Redis' own (``*``), so other services and
other instances can write to the same streams.

Inbound: see :mod:`localbroker.sync.redis_inbound`.
"""

from __future__ import annotations

import socket
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from localbroker.log import Record

from .config import RedisStreamsConfig, build_config
from .errors import SyncConfigurationError
from .redis_errors import redis_errors
from .stream_format import entry_fields, is_from_redis
from .target import SyncTarget, redact

__all__ = ["RedisStreams"]


class RedisStreams(SyncTarget[RedisStreamsConfig]):
    """Sync target: mirror every local event to Redis Streams; optionally consume some topics.

    Example::

        broker = Broker("./data", sync=[RedisStreams("redis://localhost:6379/0",
                                                     service="billing",
                                                     inbound_topics=["order.placed"])])

    Options are those of :class:`~localbroker.sync.config.RedisStreamsConfig` (keywords, or
    ``LOCALBROKER_REDIS_*`` environment variables).
    """

    kind = "redis"

    def __init__(self, url: str | None = None, **options: Any) -> None:
        super().__init__(build_config(RedisStreamsConfig, url=url, **options))
        try:
            self.client: aioredis.Redis = aioredis.Redis.from_url(
                self.config.url,
                socket_connect_timeout=self.config.connect_timeout,
                # Longer than a blocking read, so only a dead server times out.
                socket_timeout=self.config.block + self.config.connect_timeout,
                # No silent resend inside redis-py: a MULTI/EXEC whose reply was lost must go
                # through resume_point() (the watermark), not be executed twice.
                retry=Retry(NoBackoff(), 0),
            )
        except ValueError as exc:
            raise SyncConfigurationError(
                f"redis sync: cannot use URL {redact(self.config.url)!r}: {exc}"
            ) from exc
        self._streams_checked: set[str] = set()
        self.inbound: Any = None
        if self.config.inbound_topics:
            from .redis_inbound import InboundConsumer

            self.inbound = InboundConsumer(self)

    def describe(self) -> str:
        return f"redis {redact(self.config.url)}"

    def stream(self, topic: str) -> str:
        """The stream key of ``topic``."""
        return self.config.stream_prefix + topic

    @property
    def watermark_key(self) -> str:
        return f"{self.config.state_prefix}mirrored:{self.producer}"

    @property
    def consumer(self) -> str:
        return self.config.consumer or f"{socket.gethostname()}-{self.producer[:8]}"

    def wanted(self) -> bool:
        return self.config.outbound

    # -- lifecycle ---------------------------------------------------------------------------

    async def connect(self) -> None:
        with redis_errors(self.describe()):
            await self.client.ping()
        if self.config.outbound:
            await self.check_streams({e["topic"] for _, e in self._outgoing(self._read())})
        if self.inbound is not None:
            await self.inbound.setup()

    async def load_state(self, state: dict[str, Any]) -> None:
        if self.inbound is not None:
            await self.inbound.load_state(state)

    def extra_state(self) -> dict[str, Any]:
        return self.inbound.state() if self.inbound is not None else {}

    def extra_status(self) -> dict[str, Any]:
        return {"inbound": self.inbound.status()} if self.inbound is not None else {}

    async def start(self, broker: Any) -> None:
        await super().start(broker)
        if self.inbound is not None:
            self.spawn(self.inbound.run, "inbound")

    async def disconnect(self) -> None:
        await self.client.aclose()

    # -- outbound ----------------------------------------------------------------------------

    async def resume_point(self) -> int | None:
        with redis_errors(self.describe()):
            mark = await self.client.get(self.watermark_key)
        return None if mark is None else int(mark) + 1

    async def check_streams(self, topics: set[str]) -> None:
        """Fail clearly if a stream of these topics exists with another type than stream."""
        keys = sorted({self.stream(t) for t in topics} - self._streams_checked)
        if not keys:
            return
        with redis_errors(self.describe()):
            async with self.client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.type(key)
                types = await pipe.execute()
        for key, kind in zip(keys, types, strict=True):
            kind = kind.decode() if isinstance(kind, bytes) else str(kind)
            if kind not in ("stream", "none"):
                raise SyncConfigurationError(
                    f"{self.describe()}: key {key!r} holds a {kind}, not a stream; "
                    "remove it or choose another stream_prefix"
                )
            self._streams_checked.add(key)

    def _outgoing(self, records: list[Record]) -> list[tuple[int, dict[str, Any]]]:
        """``(offset, envelope)`` of the records to send (not those that came from Redis)."""
        # Never send an event back where it came from.
        return [(o, e) for o, e in self.envelopes(records) if not is_from_redis(e)]

    async def send(self, records: list[Record]) -> None:
        outgoing = self._outgoing(records)
        await self.check_streams({envelope["topic"] for _, envelope in outgoing})
        cfg = self.config
        with redis_errors(self.describe()):
            async with self.client.pipeline(transaction=True) as pipe:
                for offset, envelope in outgoing:
                    fields = entry_fields(
                        envelope, service=self.service, producer=self.producer, offset=offset
                    )
                    pipe.xadd(
                        self.stream(envelope["topic"]),
                        fields,  # type: ignore[arg-type]  # the stub's dict value union is invariant
                        maxlen=cfg.maxlen,
                        approximate=True,
                    )
                # Same transaction: the entries and the watermark land together or not at all.
                pipe.set(self.watermark_key, records[-1].offset)
                results = await pipe.execute(raise_on_error=False)
        for result in results:
            if isinstance(result, Exception):
                with redis_errors(self.describe()):
                    raise result

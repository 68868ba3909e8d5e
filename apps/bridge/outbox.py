"""--outbox: an RPC's record committed to the PostgreSQL outbox (kafkaworker.outbox) instead of
a Kafka transaction, and published by the relay the bridge runs.

An RPC answered OK then means: the record is in the database, committed, and will be
published at least once, in order per key, with the header kw.outbox.id (the answer's
outbox_id), whatever happens to the brokers or to this bridge next. A bridge killed after the
commit loses nothing: the relay of another bridge on the same table, or this one restarted,
publishes it. The RPCs carry no database work of their own, so what the flag adds is that
durability and a stable id to deduplicate on (PostgresInbox does); a service with its own
writes would make them in the same transaction as the add, as apps/payments does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import grpc
import psycopg
import structlog
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from apps.bridge.proto import bridge_pb2
from apps.bridge.publisher import PublishError, TopicCatalog, check_exists
from kafkaworker import StartupError
from kafkaworker.outbox import PostgresOutbox
from kafkaworker.postgres_table import one_line

if TYPE_CHECKING:
    from kafkaworker.outbox import OutboxRelay
    from kafkaworker.settings import Settings

log = structlog.get_logger("bridge")
# Connections for RPCs in flight: one insert and its commit take about a millisecond, so a few
# serve thousands of RPCs a second; the relay has its own.
POOL_SIZE = 8
CONNECT_TIMEOUT = 10.0
# librdkafka's default message.max.bytes: what the relay's producer would refuse.
MESSAGE_MAX_BYTES = 1_000_000


class OutboxPublisher:
    """Owns the connection pool and the relay: open(), then close() (once)."""

    def __init__(
        self,
        settings: Settings,
        topics: TopicCatalog,
        *,
        timeout: float,
        max_bytes: int = MESSAGE_MAX_BYTES,
    ) -> None:
        self.outbox = PostgresOutbox()  # postgres.url of the settings, and its postgres.outbox
        self._settings = settings
        self._topics = topics
        self._timeout = timeout
        self._max_bytes = max_bytes
        self._bootstrap = settings.kafka.bootstrap_servers
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] | None = None
        self.relay: OutboxRelay | None = None

    async def open(self) -> None:
        """The table (created when missing), the relay started, the pool open; StartupError
        in one line naming the server when the database cannot be used."""
        relay = await asyncio.to_thread(
            self.outbox.relay, self._settings, client_id="kafkaworker-bridge.outbox"
        )
        url, where = self.outbox.resolved("the bridge's --outbox", self._settings)
        pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] = AsyncConnectionPool(
            url, min_size=1, max_size=POOL_SIZE, open=False
        )
        try:
            await pool.open(wait=True, timeout=CONNECT_TIMEOUT)
        except PoolTimeout:
            await pool.close()
            raise StartupError(f"the bridge's --outbox: cannot use PostgreSQL at {where}") from None
        self._pool, self.relay = pool, relay.start()
        log.info("publishing through the outbox", database=where, table=self.outbox.table)

    async def close(self) -> None:
        """The pool closed, then the relay stopped (it flushes what it has in flight; rows
        it has not published wait in the table for the next relay)."""
        if self._pool is not None:
            await self._pool.close()
        if self.relay is not None:
            await asyncio.to_thread(self.relay.stop)

    async def publish(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None,
        headers: Sequence[tuple[str, bytes | None]],
    ) -> bridge_pb2.PublishReply:
        await check_exists(self._topics, topic, self._bootstrap)
        size = (
            len(value or b"")
            + len(key or b"")
            + sum(len(name) + len(v or b"") for name, v in headers)
        )
        if size > self._max_bytes:
            # Refused now: in the table it would be a record the relay can never publish.
            raise PublishError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"value: not written to {topic!r}: {size} bytes, over message.max.bytes "
                f"({self._max_bytes})",
            )
        assert self._pool is not None, "open() first"
        committing = False
        try:
            async with asyncio.timeout(self._timeout):
                async with self._pool.connection() as db, db.transaction():
                    row_id = await self.outbox.add_async(db, topic, value, key=key, headers=headers)
                    committing = True  # leaving the block commits
                committed_ms = time.time_ns() // 1_000_000
        except (psycopg.Error, PoolTimeout, TimeoutError) as exc:
            reason = one_line(exc) or "timed out"
            if committing:
                # The commit was sent and its answer lost: it may have been written.
                raise PublishError(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"may have been written to the outbox for {topic!r}: {reason}; retry "
                    "with the same idempotency key (PlaceOrder: the same order_id)",
                ) from None
            raise PublishError(
                grpc.StatusCode.UNAVAILABLE, f"not written to the outbox for {topic!r}: {reason}"
            ) from None
        return bridge_pb2.PublishReply(
            topic=topic, partition=-1, offset=-1, timestamp_ms=committed_ms, outbox_id=row_id
        )

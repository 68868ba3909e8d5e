"""Commits: how finished work becomes durable.

The poll thread hands over the positions that moved (every offset below each is finished).
Once a turn they are stored with the source's client, which commits what is stored every
`commit_interval` on its own thread (librdkafka's auto-commit over its offset store, with
`enable.auto.offset.store=false` so that only these positions are ever stored; a commit that
fails is retried at the next interval with whatever is stored then). Revoke and shutdown
commit synchronously. Only positions that PartitionOffsets reports are ever stored or
committed, never what the client merely handed out.

Why not commit asynchronously from the poll thread: a failed commit (a rebalance in progress,
a coordinator moving) then needs its own retry bookkeeping, or the position of a partition
that receives nothing more stays uncommitted until the next revoke. A first version did
exactly that and a fault test caught it (a killed member's rebalance ate the last commit).

A transactional commit (offsets sent inside a producer transaction) is the other way this
seam is meant to be filled.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol

import structlog
from confluent_kafka import KafkaException

from kafkaworker.runtime.source import Partition, Source

log = structlog.get_logger("kafkaworker.commit")


class Committer(Protocol):
    """The poll loop's view of commits."""

    def stage(self, partition: Partition, position: int) -> None:
        """`position` is finished up to (every offset below it is finished)."""
        ...

    def tick(self) -> None:
        """Called every turn of the poll thread."""
        ...

    def commit_now(self, positions: Mapping[Partition, int]) -> None:
        """Make these durable before returning (revoke, shutdown)."""
        ...

    def discard(self, partitions: Iterable[Partition]) -> None:
        """Forget what is staged for these (the partitions are gone)."""
        ...


class StoredOffsetCommit:
    """Stores finished positions every turn; the client commits them periodically."""

    def __init__(self, source: Source, *, handler: str) -> None:
        self._source = source
        self._handler = handler
        self._pending: dict[Partition, int] = {}  # moved since the last store
        self.commits = 0  # synchronous commits (revoke, shutdown)

    def stage(self, partition: Partition, position: int) -> None:
        """`position` is finished up to (every offset below it is finished)."""
        self._pending[partition] = position

    def tick(self) -> None:
        """Called every turn of the poll thread: store what moved."""
        if not self._pending:
            return
        pending, self._pending = self._pending, {}
        try:
            self._source.store(pending)
        except KafkaException as exc:  # e.g. a partition unassigned meanwhile
            log.warning("storing offsets failed", handler=self._handler, error=str(exc))

    def commit_now(self, positions: Mapping[Partition, int]) -> None:
        """Commit synchronously (revoke, shutdown)."""
        self.discard(positions)
        if not positions:
            return
        try:
            # Stored too: librdkafka commits what is stored when it lets partitions go (on
            # unassign and close), and an older stored position would then move the
            # committed one back (a fault test saw a drained worker's restart repeat work).
            self._source.store(positions)
            self._source.commit(positions)
            self.commits += 1
            log.debug(
                "committed",
                handler=self._handler,
                positions={str(p): offset for p, offset in positions.items()},
            )
        except KafkaException as exc:
            # Not a delivery problem: uncommitted work is delivered again, never skipped.
            log.warning("commit failed", handler=self._handler, error=str(exc))

    def discard(self, partitions: Iterable[Partition]) -> None:
        """Forget positions not stored yet (the partitions are gone, or committed now)."""
        for partition in partitions:
            self._pending.pop(partition, None)

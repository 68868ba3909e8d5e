"""MemoryShareSource: an in-memory share group (KIP-932) over a MemoryBroker's log, for tests.

One member. Each fetch acquires available records (those not finished, not held, with
deliveries left), raising their delivery counts; acknowledgements take effect when the next
fetch or a commit sends them, as with the client: ACCEPT and REJECT finish a record, RELEASE
makes it available again (archived instead at the delivery limit). Like the client's explicit
mode it refuses to fetch while a record of the previous fetch is unacknowledged: a poller
that tried would fail its unit tests, not only its integration tests.

It is a fake, not a broker: no locks that run out, no other members, no network.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence

from confluent_kafka import AcknowledgeType
from confluent_kafka import Message as Record

from kafkaworker.runtime.clock import SYSTEM_CLOCK, Clock
from kafkaworker.runtime.source import Partition
from kafkaworker.runtime.source.memory import MemoryBroker
from kafkaworker.runtime.source.share_group import ACK_NAMES, ShareGroupConfig

Key = tuple[Partition, int]


class MemoryShareSource:
    """One member of an in-memory share group (its own broker when not given, with `topics`).
    `acknowledged`: every acknowledgement sent, in order, as (partition, offset, "accept" |
    "release" | "reject"); `finished`: records accepted or rejected, by final state."""

    def __init__(
        self,
        topics: Mapping[str, int] | None = None,
        *,
        broker: MemoryBroker | None = None,
        delivery_limit: int = 5,
        max_records: int = 500,
        group: str = "memory-share-group",
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._clock = clock
        self.broker = MemoryBroker.given(broker, topics)
        self.config = ShareGroupConfig(
            group=group,
            delivery_limit=delivery_limit,
            lock_seconds=30.0,
            auto_offset_reset="earliest",
        )
        self._cond: threading.Condition = self.broker.cond
        self._max_records = max_records
        self._topics: tuple[str, ...] = ()
        self._on_joined: Callable[[], None] | None = None
        self.deliveries: dict[Key, int] = {}
        self.finished: dict[Key, str] = {}  # "accept", "reject", or "archived"
        self._held: set[Key] = set()  # acquired by the last fetch, not acknowledged yet
        self._pending: dict[Key, AcknowledgeType] = {}  # acknowledged, not sent yet
        self.acknowledged: list[tuple[Partition, int, str]] = []
        self.fetches: list[int] = []  # records per fetch
        self.closed = False

    def wait_for(self, predicate: Callable[[MemoryShareSource], bool], timeout: float) -> bool:
        """Wait until `predicate(self)` holds (checked whenever acknowledgements are sent);
        False after `timeout` seconds."""
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self), timeout)

    # -- ShareSource -------------------------------------------------------------------------

    def subscribe(self, topics: Sequence[str], on_joined: Callable[[], None]) -> None:
        with self._cond:
            missing = [t for t in topics if not self.broker.partitions(t)]
            if missing:
                raise KeyError(f"no topic {missing[0]!r}: create_topic() it first")
            self._topics = tuple(topics)
            self._on_joined = on_joined

    def fetch(self, timeout: float) -> list[Record]:
        if self._on_joined is not None:
            self._on_joined()
            self._on_joined = None
        with self._cond:
            if self._held:
                raise RuntimeError(
                    f"{len(self._held)} records from previous poll have not been acknowledged"
                )
            self._send()
            self._clock.wait(self._cond, self._available, timeout)
            taken = self._acquire()
            if taken:
                self.fetches.append(len(taken))
            return taken

    def acknowledge(self, topic: str, partition: int, offset: int, kind: AcknowledgeType) -> bool:
        key = (Partition(topic, partition), offset)
        with self._cond:
            if key not in self._held:
                return False
            self._held.discard(key)
            self._pending[key] = kind
            return True

    def commit(self) -> None:
        with self._cond:
            self._send()

    def commit_sync(self, timeout: float) -> None:
        self.commit()

    def take_refused(self) -> int:
        return 0

    def silence(self) -> float:
        return 0.0

    def close(self) -> None:
        with self._cond:
            self._send()
            self._held.clear()  # what a member still holds goes back to the group
            self.closed = True
            self._cond.notify_all()

    # -- the group's side ------------------------------------------------------------------

    def _send(self) -> None:
        for key, kind in self._pending.items():
            name = ACK_NAMES[kind]
            self.acknowledged.append((key[0], key[1], name))
            if kind is AcknowledgeType.RELEASE:
                if self.deliveries[key] >= self.config.delivery_limit:
                    self.finished[key] = "archived"
            else:
                self.finished[key] = name
        if self._pending:
            self._pending.clear()
            self._cond.notify_all()

    def _candidates(self) -> list[Key]:
        logs = self.broker.logs
        found: list[Key] = []
        for partition in sorted(p for p in logs if p.topic in self._topics):
            for offset in range(len(logs[partition])):
                key = (partition, offset)
                if key not in self.finished and key not in self._held:
                    found.append(key)
        return found

    def _available(self) -> bool:
        return bool(self._candidates())

    def _acquire(self) -> list[Record]:
        taken: list[Record] = []
        for key in self._candidates()[: self._max_records]:
            partition, offset = key
            count = self.deliveries[key] = self.deliveries.get(key, 0) + 1
            self._held.add(key)
            original = self.broker.logs[partition][offset]
            taken.append(
                Record(
                    topic=partition.topic,
                    partition=partition.partition,
                    offset=offset,
                    key=original.key(),
                    value=original.value(),
                    headers=original.headers(),
                    timestamp=original.timestamp(),
                    delivery_count=count,
                )
            )
        return taken


__all__ = ["MemoryShareSource"]

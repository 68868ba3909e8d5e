"""MemorySource: an in-memory partitioned log standing in for a consumer group, for tests.

Records are appended by hand; assignments change when a test says so; pauses and commits are
recorded where the test can see them (a commit, asynchronous or not, lands at once). As
with librdkafka, assignment changes reach the listener on the poll thread, from inside
fetch(), and a revoked partition is still assigned while the listener's on_revoke runs (it
may commit).

It is a fake, not a broker: one member, no prefetch, no network. What it shows about the
runtime is the runtime's own logic (ordering, offsets, backpressure, revokes), which is
exactly what it is for; Kafka's behaviour is tested against a real broker.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Callable, Mapping, Sequence

from confluent_kafka import TIMESTAMP_CREATE_TIME, KafkaError, KafkaException, Message

from kafkaworker.runtime.clock import SYSTEM_CLOCK, Clock
from kafkaworker.runtime.source import AssignmentListener, OffsetAndMetadata, Partition, Record

Headers = Sequence[tuple[str, bytes | None]]


class MemoryBroker:
    """Topics of partitions of records, shared by the memory sources of several groups. One
    condition guards it all: a test's cluster is small and its contention does not matter."""

    def __init__(self, topics: Mapping[str, int] | None = None) -> None:
        self.cond = threading.Condition()
        self.logs: dict[Partition, list[Record]] = {}
        for topic, partitions in (topics or {}).items():
            self.create_topic(topic, partitions)

    @classmethod
    def given(cls, broker: MemoryBroker | None, topics: Mapping[str, int] | None) -> MemoryBroker:
        """`broker` (a new one when None) with `topics` created in it."""
        broker = broker if broker is not None else cls()
        for topic, partitions in (topics or {}).items():
            broker.create_topic(topic, partitions)
        return broker

    def create_topic(self, topic: str, partitions: int = 1) -> None:
        with self.cond:
            for index in range(partitions):
                self.logs.setdefault(Partition(topic, index), [])

    def partitions(self, topic: str) -> int:
        with self.cond:
            return sum(1 for p in self.logs if p.topic == topic)

    def append(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        partition: int | None = None,
        headers: Headers | None = None,
        timestamp_ms: int = 1_700_000_000_000,
    ) -> Record:
        """Append a record; the record, with its partition and offset. Without `partition`,
        a key picks one (crc32, not the Java client's murmur2: pass `partition` where the
        exact one matters) and no key picks partition 0."""
        with self.cond:
            count = sum(1 for p in self.logs if p.topic == topic)
            if not count:
                raise KeyError(f"no topic {topic!r}: create_topic() it first")
            if partition is None:
                partition = zlib.crc32(key) % count if key is not None else 0
            log = self.logs[Partition(topic, partition)]
            record = Message(
                topic=topic,
                partition=partition,
                offset=len(log),
                key=key,
                value=value,
                headers=list(headers) if headers is not None else None,
                timestamp=(TIMESTAMP_CREATE_TIME, timestamp_ms),
            )
            log.append(record)
            self.cond.notify_all()
            return record


class MemorySource:
    """One group's view of a MemoryBroker (its own one when not given, with `topics`).
    `auto_assign`: a group of one, given every partition of the subscribed topics on the
    first fetch. `clock`: what a fetch with nothing to take waits on (a manual clock moves
    instead, so a test turning the poller by hand never waits)."""

    def __init__(
        self,
        topics: Mapping[str, int] | None = None,
        *,
        broker: MemoryBroker | None = None,
        auto_assign: bool = True,
        clock: Clock = SYSTEM_CLOCK,
        offset_metadata_max_bytes: int = 4096,
    ) -> None:
        self._clock = clock
        # The broker's limit: a commit with longer metadata is refused, as Kafka refuses it.
        self.offset_metadata_max_bytes = offset_metadata_max_bytes
        self.broker = MemoryBroker.given(broker, topics)
        self._cond = self.broker.cond
        self._logs = self.broker.logs
        self._auto_assign = auto_assign
        self._listener: AssignmentListener | None = None
        self._subscribed: tuple[str, ...] = ()
        # Assignment changes not yet delivered to the listener, in order.
        self._events: list[tuple[str, list[Partition]]] = []
        self._positions: dict[Partition, int] = {}  # assigned partitions: the next offset
        self._next_partition = 0  # fetch() starts at a different partition each time
        self.paused: set[Partition] = set()
        self.committed: dict[Partition, int] = {}
        self.metadata: dict[Partition, str] = {}  # committed with `committed`
        self.commits: list[dict[Partition, int]] = []  # every commit, in order
        # Set by a test: the next commits of these partitions fail with this error code (an
        # asynchronous one told by failed_commits()), as a commit during a rebalance does.
        self.fail_commits: dict[Partition, int] = {}
        self._failed: list[tuple[Partition, int]] = []
        self._acknowledged: list[tuple[Partition, int]] = []
        # Set by a test: commits of these partitions wait for answer_commits(), neither
        # acknowledged nor refused (a group coordinator that is away: librdkafka keeps the
        # request until it is back, or until the member's session times out).
        self.unanswered: set[Partition] = set()
        self._waiting: dict[Partition, tuple[int, str]] = {}
        self.closed = False

    # -- the test's side (records go in through `broker`) ---------------------------------

    def assign(self, partitions: Sequence[Partition]) -> None:
        self._event("assign", partitions)

    def revoke(self, partitions: Sequence[Partition]) -> None:
        self._event("revoke", partitions)

    def lose(self, partitions: Sequence[Partition]) -> None:
        self._event("lost", partitions)

    @property
    def assigned(self) -> set[Partition]:
        with self._cond:
            return set(self._positions)

    def log_size(self, partition: Partition) -> int:
        with self._cond:
            return len(self._logs[partition])

    def wait_for(self, predicate: Callable[[MemorySource], bool], timeout: float) -> bool:
        """Wait until `predicate(self)` holds (checked on every commit, pause and assignment
        change); False after `timeout` seconds."""
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self), timeout)

    def _event(self, kind: str, partitions: Sequence[Partition]) -> None:
        with self._cond:
            self._events.append((kind, [Partition(*p) for p in partitions]))
            self._cond.notify_all()

    # -- Source ----------------------------------------------------------------------------

    def subscribe(self, topics: Sequence[str], listener: AssignmentListener) -> None:
        with self._cond:
            missing = [t for t in topics if not any(p.topic == t for p in self._logs)]
            if missing:
                raise KeyError(f"no topic {missing[0]!r}: create_topic() it first")
            self._listener = listener
            self._subscribed = tuple(topics)
            if self._auto_assign:
                self._events.append(
                    ("assign", sorted(p for p in self._logs if p.topic in self._subscribed))
                )

    def fetch(self, timeout: float, max_records: int) -> list[Record]:
        with self._cond:
            self._clock.wait(self._cond, lambda: bool(self._events) or self._available(), timeout)
            before = set(self._positions)
        self._deliver_events()
        with self._cond:
            # As with librdkafka, a partition assigned during this call has nothing fetched
            # yet: its records come with the next fetch (after the listener could pause it).
            return self._take(max_records, set(self._positions) - before)

    def pause(self, partitions: Sequence[Partition]) -> None:
        with self._cond:
            self.paused.update(partitions)
            self._cond.notify_all()

    def resume(self, partitions: Sequence[Partition]) -> None:
        with self._cond:
            self.paused.difference_update(partitions)
            self._cond.notify_all()

    def commit(
        self, offsets: Mapping[Partition, OffsetAndMetadata], *, asynchronous: bool = False
    ) -> None:
        """Committed at once, asynchronous or not (no broker in between)."""
        with self._cond:
            for partition in offsets:
                if partition not in self._positions:
                    raise AssertionError(f"commit of {partition}, which is not assigned")
            failing = {p: self.fail_commits.pop(p) for p in offsets if p in self.fail_commits}
            failing.update(
                (p, KafkaError.OFFSET_METADATA_TOO_LARGE)
                for p, (_, metadata) in offsets.items()
                if len(metadata) > self.offset_metadata_max_bytes
            )
            if failing and not asynchronous:
                raise KafkaException(KafkaError(next(iter(failing.values()))))
            self._failed.extend(failing.items())
            self._waiting.update((p, o) for p, o in offsets.items() if p in self.unanswered)
            offsets = {
                p: o for p, o in offsets.items() if p not in failing and p not in self.unanswered
            }
            self._apply(offsets)

    def answer_commits(self) -> None:
        """The coordinator is back: the commits that waited are made and acknowledged."""
        with self._cond:
            self.unanswered.clear()
            waiting, self._waiting = self._waiting, {}
            if waiting:
                self._apply(waiting)

    def _apply(self, offsets: Mapping[Partition, tuple[int, str]]) -> None:
        """Under the lock: commits made (and acknowledged)."""
        self._acknowledged.extend((p, offset) for p, (offset, _) in offsets.items())
        self.committed.update((p, offset) for p, (offset, _) in offsets.items())
        self.metadata.update((p, metadata) for p, (_, metadata) in offsets.items())
        self.commits.append({p: offset for p, (offset, _) in offsets.items()})
        self._cond.notify_all()

    def failed_commits(self) -> list[tuple[Partition, int]]:
        with self._cond:
            failed, self._failed = self._failed, []
            return failed

    def acknowledged_commits(self) -> list[tuple[Partition, int]]:
        with self._cond:
            acknowledged, self._acknowledged = self._acknowledged, []
            return acknowledged

    def log_end(self, partition: Partition) -> int | None:
        with self._cond:
            log = self._logs.get(partition)
            return len(log) if log is not None else None

    def position(self, partition: Partition) -> int | None:
        with self._cond:
            return self._positions.get(partition)

    def silence(self) -> float:
        return 0.0  # the in-memory broker always answers

    # -- TransactionalSource: exactly_once handlers' transactions commit through commit() ---

    def group_metadata(self) -> object:
        return ("memory-group", id(self))

    def committed_positions(
        self, partitions: Sequence[Partition], timeout: float
    ) -> dict[Partition, int]:
        with self._cond:
            return {p: self.committed[p] for p in partitions if p in self.committed}

    def seek(self, positions: Mapping[Partition, int]) -> None:
        with self._cond:
            for partition, position in positions.items():
                if partition in self._positions:
                    self._positions[partition] = position
            self._cond.notify_all()

    def close(self) -> None:
        self._deliver_events()
        with self._cond:
            assigned = sorted(self._positions)
        if assigned and self._listener is not None:
            self._listener.on_revoke(assigned)
        with self._cond:
            self._positions.clear()
            self.closed = True
            self._cond.notify_all()

    # -- inside fetch() --------------------------------------------------------------------

    def _available(self) -> bool:
        return any(
            position < len(self._logs[partition])
            for partition, position in self._positions.items()
            if partition not in self.paused
        )

    def _deliver_events(self) -> None:
        """Assignment changes, delivered like librdkafka's callbacks: on this thread, one at a
        time, without the lock (the listener calls back into the source)."""
        listener = self._listener
        while listener is not None:
            with self._cond:
                if not self._events:
                    return
                kind, partitions = self._events.pop(0)
                if kind == "assign":
                    partitions = [p for p in partitions if p not in self._positions]
                    starts = {p: 0 for p in partitions if p not in self.committed}
                    if starts:  # as ConsumerGroupSource does: every assigned one has a start
                        self.committed.update(starts)
                        self.commits.append(starts)
                    for partition in partitions:
                        self._positions[partition] = self.committed[partition]
                    committed = {
                        p: OffsetAndMetadata(self.committed[p], self.metadata.get(p, ""))
                        for p in partitions
                    }
                else:
                    partitions = [p for p in partitions if p in self._positions]
            if kind == "assign":
                listener.on_assign(partitions, committed)
                listener.on_joined()
            elif partitions:
                (listener.on_revoke if kind == "revoke" else listener.on_lost)(partitions)
            with self._cond:
                if kind != "assign":
                    for partition in partitions:
                        del self._positions[partition]
                        self.paused.discard(partition)
                self._cond.notify_all()

    def _take(self, max_records: int, new: set[Partition]) -> list[Record]:
        """Runs of one partition, in offset order, from a different partition each time."""
        partitions = [p for p in sorted(self._positions) if p not in self.paused and p not in new]
        if not partitions:
            return []
        start = self._next_partition % len(partitions)
        self._next_partition += 1
        taken: list[Record] = []
        for partition in partitions[start:] + partitions[:start]:
            room = max_records - len(taken)
            if room <= 0:
                break
            position = self._positions[partition]
            run = self._logs[partition][position : position + room]
            self._positions[partition] = position + len(run)
            taken.extend(run)
        return taken


__all__ = ["MemoryBroker", "MemorySource"]

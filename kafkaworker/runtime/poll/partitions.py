"""PartitionState: what the poll thread knows about one partition during one assignment."""

from __future__ import annotations

from collections import deque

from kafkaworker.runtime.handoff import Lease
from kafkaworker.runtime.poll.offsets import PartitionOffsets
from kafkaworker.runtime.source import Partition


class PartitionState:
    """Per-assignment state, the poll thread's alone. The execute side sees the partition
    only through its `lease` (runtime/handoff.py), a new one per assignment: completions of an
    earlier assignment, still arriving from slow handlers, carry a lease the poll thread no
    longer holds, and are ignored."""

    __slots__ = (
        "assigned_at",
        "in_flight",
        "last_dispatched",
        "lease",
        "offsets",
        "partition",
        "pause_reason",
        "paused",
        "stamps",
        "topic",
        "topic_partition",
    )

    def __init__(
        self, topic: str, partition: int, *, generation: int = 0, now: float = 0.0
    ) -> None:
        self.topic = topic
        self.partition = partition
        self.topic_partition = Partition(topic, partition)
        self.lease = Lease(self.topic_partition, generation)
        self.offsets = PartitionOffsets()
        # Dispatched to the executor and not yet reported back (done or dropped).
        self.in_flight = 0
        # Highest offset dispatched in this assignment: a record fetched again is not re-run.
        self.last_dispatched = -1
        self.paused = False
        # Why it is paused (backpressure, circuit breaker, delayed retry, operator): for the
        # dashboard, which shows the reason beside the flag.
        self.pause_reason = ""
        # Unix time of this assignment (the clock's): the partition's last rebalance, for the
        # dashboard.
        self.assigned_at = now
        # (first offset, timestamp in ms) of each run fetched and not yet finished, oldest
        # first: the time lag (age of the oldest unfinished record) is read off it without a
        # per-record cost. Pruned by the gauges (poll/gauges.py).
        self.stamps: deque[tuple[int, int]] = deque()

    def __repr__(self) -> str:
        return f"<PartitionState {self.topic_partition} in_flight={self.in_flight}>"

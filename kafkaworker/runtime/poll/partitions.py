"""PartitionState: what the poll thread knows about one partition during one assignment."""

from __future__ import annotations

import time
from collections import deque

from kafkaworker.runtime.poll.offsets import PartitionOffsets
from kafkaworker.runtime.source import Partition


class PartitionState:
    """Per-assignment state. A partition assigned again gets a new object, so completions of
    the previous assignment, still arriving from slow handlers, are recognised and ignored.

    Written on the poll thread only. The executor reads `revoked` (a plain attribute read is
    atomic); its `revoke()`, called on the poll thread, is what sets it.
    """

    __slots__ = (
        "assigned_at",
        "forgotten",
        "in_flight",
        "last_dispatched",
        "offsets",
        "partition",
        "pause_reason",
        "paused",
        "revoked",
        "stamps",
        "topic",
        "topic_partition",
    )

    def __init__(self, topic: str, partition: int) -> None:
        self.topic = topic
        self.partition = partition
        self.topic_partition = Partition(topic, partition)
        self.offsets = PartitionOffsets()
        # Dispatched to the executor and not yet reported back (done or dropped).
        self.in_flight = 0
        # Highest offset dispatched in this assignment: a record fetched again is not re-run.
        self.last_dispatched = -1
        self.paused = False
        # Why it is paused (backpressure, circuit breaker, delayed retry, operator): for the
        # dashboard, which shows the reason beside the flag.
        self.pause_reason = ""
        # Unix time of this assignment: the partition's last rebalance, for the dashboard.
        self.assigned_at = time.time()
        # Set when its work must stop (revoke, lost, shutdown): unstarted messages are
        # dropped, waits are cut short, nothing more is started.
        self.revoked = False
        # Set when the poll thread forgets the partition: late completions are then ignored
        # (a later assignment of the partition has a new PartitionState).
        self.forgotten = False
        # (first offset, timestamp in ms) of each run fetched and not yet finished, oldest
        # first: the time lag (age of the oldest unfinished record) is read off it without a
        # per-record cost. Pruned by the gauges (poll/gauges.py).
        self.stamps: deque[tuple[int, int]] = deque()

    def __repr__(self) -> str:
        return f"<PartitionState {self.topic_partition} in_flight={self.in_flight}>"

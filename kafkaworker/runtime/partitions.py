"""PartitionState: what one worker knows about one partition during one assignment."""

from __future__ import annotations

import threading
from collections import deque
from typing import TYPE_CHECKING, Any

from kafkaworker.runtime.offsets import PartitionOffsets

if TYPE_CHECKING:
    from kafkaworker.message import Message


class PartitionState:
    """Per-assignment state. A partition assigned again gets a new object, so completions of
    the previous assignment, still arriving from slow handlers, are recognised and ignored.

    Written by the poll thread only, except `revoked`, which pool threads read (a plain
    attribute read is atomic) and wait on (`revoked_event`, which also cuts backoff sleeps).
    """

    __slots__ = (
        "delayed",
        "forgotten",
        "in_flight",
        "last_dispatched",
        "offsets",
        "over_limit",
        "partition",
        "pause_at_once_until",
        "paused",
        "revoked",
        "revoked_event",
        "topic",
    )

    def __init__(self, topic: str, partition: int) -> None:
        self.topic = topic
        self.partition = partition
        self.offsets = PartitionOffsets()
        # Dispatched to the pool and not yet reported back (done or dropped).
        self.in_flight = 0
        # Highest offset dispatched in this assignment: a record fetched again is not re-run.
        self.last_dispatched = -1
        # Records of a delayed retry topic fetched before they are due, held in order (the
        # partition stays paused meanwhile). Tracked as outstanding, not yet in flight.
        self.delayed: deque[Message[Any]] = deque()
        self.paused = False
        self.over_limit = False
        # Until then (time.monotonic()) it is paused at once over a limit: withholding records
        # did not bring it back under in time (see Poller._withhold).
        self.pause_at_once_until = 0.0
        self.revoked = False
        self.revoked_event = threading.Event()
        # Set when the poll thread forgets the partition: late completions are then ignored
        # (a later assignment of the partition has a new PartitionState).
        self.forgotten = False

    def revoke(self) -> None:
        """Stop work on this partition: unstarted messages are dropped, backoffs cut short."""
        self.revoked = True
        self.revoked_event.set()

    def __repr__(self) -> str:
        return f"<PartitionState {self.topic}[{self.partition}] in_flight={self.in_flight}>"

"""Lanes: how ordering is kept. Pure: no Kafka, no threads.

A lane is a FIFO of messages. An exclusive lane is drained by at most one worker thread at a
time, which is what keeps order: one lane per partition (`partition`, Kafka's own guarantee)
or per key within a partition (`key`; null keys share one lane). With `none` there is a single
shared lane that every worker drains at once.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterable
from typing import TYPE_CHECKING, Any

from kafkaworker.handlers import Ordering
from kafkaworker.message import Message

if TYPE_CHECKING:
    from kafkaworker.runtime.partitions import PartitionState

LaneKey = Hashable


Run = tuple["PartitionState", list[Message[Any]]]


def by_lane(
    ordering: Ordering, runs: Iterable[Run]
) -> Iterable[tuple[LaneKey, list[Message[Any]]]]:
    """Group runs of messages (each of one partition, in fetch order) by the lane they go to.

    A partition's lane is keyed by its PartitionState: nothing to compute per message, and a
    partition assigned again gets new lanes, never one still holding the previous
    assignment's work.
    """
    if ordering == "partition":
        return runs
    if ordering == "none":
        return [(None, [msg for _, messages in runs for msg in messages])]
    lanes: dict[LaneKey, list[Message[Any]]] = {}
    for state, messages in runs:
        for msg in messages:
            key = (state, msg.key)
            lane = lanes.get(key)
            if lane is None:
                lanes[key] = [msg]
            else:
                lane.append(msg)
    return lanes.items()


class Lane:
    """A FIFO of messages; `scheduled` while it waits in the pool's ready queue."""

    __slots__ = ("active", "exclusive", "key", "queue", "scheduled")

    def __init__(self, key: LaneKey, *, exclusive: bool) -> None:
        self.key = key
        self.exclusive = exclusive
        self.queue: deque[Message[Any]] = deque()
        self.scheduled = False
        self.active = False  # an exclusive lane being drained by a worker

    def __repr__(self) -> str:
        return f"<Lane {self.key!r} queued={len(self.queue)} active={self.active}>"

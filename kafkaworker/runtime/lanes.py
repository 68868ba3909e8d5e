"""Lanes: how ordering is kept. Pure: no Kafka, no threads.

A lane is a FIFO of messages. An exclusive lane is drained by at most one worker thread at a
time, which is what keeps order: one lane per partition (`partition`, Kafka's own guarantee)
or per key within a partition (`key`; null keys share one lane). With `none` there is a single
shared lane that every worker drains at once.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable
from typing import Any

from kafkaworker.handlers import Ordering
from kafkaworker.message import Message

LaneKey = Hashable


# A partition's lane is keyed by its PartitionState: no tuple per message, and a partition
# assigned again gets new lanes, never a lane still holding the previous assignment's work.
def _by_partition(msg: Message[Any]) -> LaneKey:
    return msg._state  # type: ignore[no-any-return]


def _by_key(msg: Message[Any]) -> LaneKey:
    return (msg._state, msg.key)


def _shared(msg: Message[Any]) -> LaneKey:
    return None


def lane_key_function(ordering: Ordering) -> Callable[[Message[Any]], LaneKey]:
    return {"partition": _by_partition, "key": _by_key, "none": _shared}[ordering]


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

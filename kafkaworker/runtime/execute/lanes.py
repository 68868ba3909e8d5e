"""Lanes: how ordering is kept. Pure: no Kafka, no threads (the executor holds its lock).

A lane is a FIFO of messages. An exclusive lane is drained by one worker at a time, which is
what keeps order: one lane per partition (`partition`, Kafka's own guarantee) or per key
within a partition (`key`; null keys share one lane). With `none` there is a single shared
lane that every worker drains at once.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Hashable, Iterable
from operator import attrgetter

from kafkaworker.handlers import Ordering
from kafkaworker.runtime.handoff import Dispatched, Lease, Run
from kafkaworker.runtime.source import Record

LaneKey = Hashable
_RECORD = attrgetter("record")  # a Message's confluent-kafka record
_KEY = Record.key


def by_lane(ordering: Ordering, runs: Iterable[Run]) -> Iterable[tuple[LaneKey, list[Dispatched]]]:
    """Group runs of messages (each of one partition, in fetch order) by the lane they go to.

    A partition's lane is keyed by its lease: nothing to compute per message, and a partition
    assigned again gets new lanes, never one still holding the previous assignment's work.
    """
    if ordering == "partition":
        return runs
    if ordering == "none":
        return [(None, [msg for _, messages in runs for msg in messages])]
    lanes: dict[LaneKey, list[Dispatched]] = {}
    for lease, messages in runs:
        by_key: dict[bytes | None, list[Dispatched]] = {}
        # The keys read in C (the record's key(), not the Message property): a Python call
        # per message was most of the cost of cutting a keyed batch into lanes.
        for msg, key in zip(messages, map(_KEY, map(_RECORD, messages)), strict=True):
            lane = by_key.get(key)
            if lane is None:
                by_key[key] = [msg]
            else:
                lane.append(msg)
        for key, lane in by_key.items():
            # A partition can come in two runs of one batch (a fetch interleaves partitions,
            # as after a consumer rejoined): the second run's messages of a key go after the
            # first's, not in their place. Replacing them left the first run's messages
            # counted in flight, never run nor reported, and the partition's commit stuck
            # (found by the broker-crash fault test).
            queued = lanes.get((lease, key))
            if queued is None:
                lanes[(lease, key)] = lane
            else:
                queued.extend(lane)
    return lanes.items()


class Lane:
    """A FIFO of messages; `scheduled` while it waits in the ready queue."""

    __slots__ = ("active", "exclusive", "key", "queue", "scheduled")

    def __init__(self, key: LaneKey, *, exclusive: bool) -> None:
        self.key = key
        self.exclusive = exclusive
        self.queue: deque[Dispatched] = deque()
        self.scheduled = False
        self.active = False  # an exclusive lane being drained by a worker

    def __repr__(self) -> str:
        return f"<Lane {self.key!r} queued={len(self.queue)} active={self.active}>"


class Lanes:
    """The lanes of one handler and the queue of those ready to be taken.

    An exclusive lane is handed over whole (its deque swapped for an empty one), so a worker
    drains many messages per lock acquisition; the shared `none` lane hands out `take_size`
    messages at a time. Not thread-safe: the executor calls it under its own lock.
    """

    def __init__(self, ordering: Ordering, *, take_size: int = 1) -> None:
        self.ordering = ordering
        self.exclusive = ordering != "none"
        # The shared lane's share per take: 1, or a batch handler's max_size. A larger slice
        # would run its messages one after another in one worker, so a slow one would hold up
        # the rest while other workers sit idle (head-of-line blocking).
        self.take_size = take_size
        self._lanes: dict[LaneKey, Lane] = {}
        self._ready: deque[Lane] = deque()

    def __bool__(self) -> bool:
        """Whether a lane is ready to be taken."""
        return bool(self._ready)

    def submit(self, runs: list[Run]) -> int:
        """Queue runs on their lanes; how many workers there is new work for."""
        exclusive = self.exclusive
        lanes, ready = self._lanes, self._ready
        woken = 0
        for key, batch in by_lane(self.ordering, runs):
            lane = lanes.get(key)
            if lane is None:
                lane = lanes[key] = Lane(key, exclusive=exclusive)
            lane.queue.extend(batch)
            if not lane.scheduled and not lane.active:
                lane.scheduled = True
                ready.append(lane)
                woken += 1
            if not exclusive:
                woken += len(batch)  # the shared lane: one worker per message
        return woken

    def take(self) -> tuple[Lane, deque[Dispatched]] | None:
        """The next ready lane and the messages its taker runs now, in order."""
        if not self._ready:
            return None
        lane = self._ready[0]
        if lane.exclusive:
            self._ready.popleft()
            lane.scheduled = False
            lane.active = True
            chunk, lane.queue = lane.queue, deque()
            return lane, chunk
        queued = lane.queue
        chunk = deque(queued.popleft() for _ in range(min(self.take_size, len(queued))))
        if not queued:
            self._ready.popleft()
            lane.scheduled = False
        return lane, chunk

    def top_up(self, lane: Lane) -> deque[Dispatched]:
        """What was queued on an exclusive lane since its taker took it (batch handlers fill
        a batch this way)."""
        queued, lane.queue = lane.queue, deque()
        return queued

    def release(self, lane: Lane) -> bool:
        """The taker of an exclusive lane is done with it; True when it was queued again (new
        messages came meanwhile), so that a worker should be woken."""
        lane.active = False
        if lane.queue:
            if not lane.scheduled:
                lane.scheduled = True
                self._ready.append(lane)
                return True
            return False
        if self._lanes.get(lane.key) is lane:
            # Forget empty lanes: with ordering="key" there is one per key ever seen.
            del self._lanes[lane.key]
        return False

    def drop(self, leases: Collection[Lease]) -> list[Dispatched]:
        """Remove and return the queued, unstarted messages of these leases."""
        wanted = set(map(id, leases))
        dropped: list[Dispatched] = []
        for key, lane in list(self._lanes.items()):
            keep: deque[Dispatched] = deque()
            for msg in lane.queue:
                (dropped if id(msg.lease) in wanted else keep).append(msg)
            lane.queue = keep
            if not keep and not lane.active:
                if lane.scheduled:
                    self._ready.remove(lane)
                    lane.scheduled = False
                del self._lanes[key]
        return dropped

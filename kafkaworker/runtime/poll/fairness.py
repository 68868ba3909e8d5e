"""Fair dispatch: how much of each partition's fetched work the executor holds at once, so that
under a backlog every assigned partition reaches the handlers soon after its assignment.

The executor runs ready lanes first come, first served, a lane's whole queue at a time (a
worker drains an exclusive lane in one go: execute/core.py). Fetched records come from
librdkafka in long runs of one partition (a fetch response holds up to
`max.partition.fetch.bytes`, 1 MB, of each), so handing the executor everything fetched put
thousands of messages of the first partitions ahead of the last one's first: with 8
backlogged partitions, a 1 ms handler and four threads, a partition waited seconds for its
first record (measured: tests/faults/test_fairness.py, docs/architecture.md, Fairness).

So a partition has at most its `quota` of messages with the executor; what it fetched beyond
waits here, on the poll thread, in its PartitionState's `backlog`, and is handed over, a
quota's worth of each partition in turn, as its messages finish. The quota is what the
handler runs in FAIR_WAIT across its workers, shared by the assigned partitions: however many
messages are queued, a newly dispatched one starts within about FAIR_WAIT. A fast handler's
quota is large (the whole per-partition limit: nothing waits here), a slow one's small. The
backlog's offsets are tracked as fetched (backpressure counts them, nothing is committed past
them); a revoke or shutdown drops it like queued work: never started, delivered again.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping

from kafkaworker.runtime.handoff import Lease, Run
from kafkaworker.runtime.poll.partitions import PartitionState

# Work the executor holds, in seconds of the handler's time across its workers.
FAIR_WAIT = 0.25
# The quota while the handler's time per message is not known yet (the first reports come
# within 50 ms): small, so that the first fetch of a backlog does not fill the lanes with the
# partitions that came first.
FIRST_QUOTA = 32
UNLIMITED = sys.maxsize


class FairDispatch:
    """The quota and the partitions' backlogs. The poll thread's alone."""

    def __init__(self, *, concurrency: int, max_per_partition: int, min_quota: int = 1) -> None:
        self._concurrency = concurrency
        self._max = max_per_partition
        # A batch handler's batch must fit.
        self._min = max(1, min_quota)
        self.quota = UNLIMITED
        self.waiting = 0  # messages in backlogs, over all partitions
        self._next = 0  # the partition whose backlog is handed over first, in turn

    def update(self, partitions: int, handler_seconds: float) -> int:
        """The quota for this turn, from the assigned partitions and the handler's recent time
        per message (0: not known yet)."""
        if partitions <= 1:
            quota = UNLIMITED  # nobody to be fair to
        elif handler_seconds <= 0:
            quota = FIRST_QUOTA
        else:
            quota = int(FAIR_WAIT * self._concurrency / (partitions * handler_seconds))
        # At the per-partition limit backpressure holds each partition back anyway.
        self.quota = UNLIMITED if quota >= self._max else max(self._min, quota)
        return self.quota

    def admit(self, runs: list[Run], leased: Mapping[Lease, PartitionState]) -> list[Run]:
        """Of fetched runs, what goes to the executor now; the rest joins its partition's
        backlog (behind what waits there already: order within a partition is kept)."""
        quota = self.quota
        admitted: list[Run] = []
        now: dict[PartitionState, int] = {}  # admitted by this call, per partition
        for lease, messages in runs:
            state = leased[lease]
            backlog = state.backlog
            room = quota - state.in_flight - now.get(state, 0)
            if not backlog and len(messages) <= room:
                admitted.append((lease, messages))
                now[state] = now.get(state, 0) + len(messages)
                continue
            rest = messages
            if room > 0 and not backlog:
                admitted.append((lease, messages[:room]))
                now[state] = now.get(state, 0) + room
                rest = messages[room:]
            backlog.extend(rest)
            self.waiting += len(rest)
        return admitted

    def release(self, states: list[PartitionState]) -> list[Run]:
        """What the backlogs hand over now: each partition up to its quota, in turn."""
        runs: list[Run] = []
        if not self.waiting or not states:
            return runs
        quota = self.quota
        start = self._next % len(states)
        self._next += 1
        # A partition is topped up once half its quota has finished (or its whole backlog
        # fits), not as each message finishes: handing over the few messages that finished
        # since the last turn made runs of a handful, and the executor's cost per run (its
        # lock, a lane's wake-up) then weighed on every message: S2 key order, 32 threads,
        # CPU per message 1.41-1.44x main's with the top-up per turn (benchmarks/ab_trees.py).
        half = max(1, quota // 2)
        for state in states[start:] + states[:start]:
            backlog = state.backlog
            room = quota - state.in_flight
            if not backlog or room < min(half, len(backlog)):
                continue
            take = min(room, len(backlog))
            runs.append((state.lease, [backlog.popleft() for _ in range(take)]))
            self.waiting -= take
        return runs

    def drop(self, states: Iterable[PartitionState]) -> None:
        """Forget the backlogs of partitions let go (never started: delivered again)."""
        for state in states:
            self.waiting -= len(state.backlog)
            state.backlog.clear()

"""Backpressure: which partitions to pause, and when to withhold records instead. Pure: counts
and an injected clock in, a decision out; the poll thread carries it out.

The bound is on *outstanding* messages: fetched and not yet committable (queued, in flight,
or finished behind an unfinished offset). A partition over `max_pending_per_partition` is
limited until it drains to half. While the handler's total is over `max_pending` (until it
drains to half), the partitions holding at least their fair share are limited: the budget
fills in fetch order, and limiting every partition would starve those fetched last.

A pause is not free: librdkafka drops the partition's prefetched records and fetches them
again on resume (librdkafka#5343). So over a limit the poll thread first *withholds* (takes no
records; they wait in librdkafka's queue, which stops fetching when full) for at most
WITHHOLD seconds, and pauses only if that did not bring the partition back under. Handlers
slower than WITHHOLD_BELOW per message are paused at once: a refetch costs them little, and
the pause is what lets the other partitions' records through.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

from kafkaworker.runtime.clock import SYSTEM_CLOCK, Clock
from kafkaworker.runtime.poll.partitions import PartitionState

# A fast handler drains to the low mark in 5-25 ms here; a slow one is paused after this.
WITHHOLD = 0.1
# A partition that needed pausing is paused at once for this long: withholding stops every
# partition, and a slow one must not stall the others each time it refills.
PAUSE_AT_ONCE_FOR = 30.0
WITHHOLD_BELOW = 0.001


class Backpressure:
    def __init__(
        self, max_pending: int, max_pending_per_partition: int, *, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self.max_pending = max_pending
        self.max_pending_per_partition = max_pending_per_partition
        self._clock = clock
        # Over the handler's budget: set at max_pending, cleared at half of it.
        self.over_budget = False
        # Over the per-partition limit: set at the limit, cleared at half of it.
        self._over_limit: set[PartitionState] = set()
        # Until then (clock.monotonic()) the partition is paused at once over a limit.
        self._pause_at_once_until: dict[PartitionState, float] = {}
        # Since when the poll thread withholds records; None while it takes them.
        self._withholding_since: float | None = None
        self.withheld = 0  # times withholding began

    @property
    def withholding(self) -> bool:
        return self._withholding_since is not None

    def limited(
        self, partitions: Collection[PartitionState], handler_seconds: float
    ) -> set[PartitionState]:
        """The partitions to keep paused now. Sets `withholding` when newly limited
        partitions are withheld from for a while instead."""
        high = self.max_pending_per_partition
        low = high // 2
        total = 0
        for state in partitions:
            outstanding = len(state.offsets)
            total += outstanding
            if outstanding >= high:
                self._over_limit.add(state)
            elif outstanding <= low:
                self._over_limit.discard(state)
        if total >= self.max_pending:
            self.over_budget = True
        elif total <= self.max_pending // 2:
            self.over_budget = False
        # The total stays under 2 x max_pending: the others may each still grow to their share.
        fair = self.max_pending // max(1, len(partitions))
        over_budget = self.over_budget
        limited = {
            state
            for state in partitions
            if (over_budget and len(state.offsets) >= fair) or state in self._over_limit
        }
        withhold = self._withhold([s for s in limited if not s.paused], handler_seconds)
        return {state for state in limited if state.paused or not withhold}

    def forget(self, partitions: Iterable[PartitionState]) -> None:
        for state in partitions:
            self._over_limit.discard(state)
            self._pause_at_once_until.pop(state, None)

    def _withhold(self, newly_limited: list[PartitionState], handler_seconds: float) -> bool:
        now = self._clock.monotonic()
        if (
            not newly_limited
            or handler_seconds >= WITHHOLD_BELOW
            or any(self._pause_at_once_until.get(s, 0.0) > now for s in newly_limited)
        ):
            self._withholding_since = None
            return False
        if self._withholding_since is None:
            self._withholding_since = now
            self.withheld += 1
            return True
        if now - self._withholding_since < WITHHOLD:
            return True
        for state in newly_limited:
            self._pause_at_once_until[state] = now + PAUSE_AT_ONCE_FOR
        self._withholding_since = None
        return False

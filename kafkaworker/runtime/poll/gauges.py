"""The poll thread's gauges: refreshed once a second, since a second's staleness costs nothing
and a per-message update would (see observability/metrics.py)."""

from __future__ import annotations

import contextlib
from collections.abc import Collection
from typing import NamedTuple, cast

from kafkaworker.observability.metrics import Metrics
from kafkaworker.runtime.clock import SYSTEM_CLOCK, Clock
from kafkaworker.runtime.poll.partitions import PartitionState
from kafkaworker.runtime.source import ShareSource, Source

REFRESH_EVERY = 1.0


class PartitionRow(NamedTuple):
    """One assigned partition as the dashboard shows it, as of the latest refresh."""

    topic: str
    partition: int
    committable: int | None  # the position finished work has reached (committed within
    # commit_interval)
    log_end: int | None
    lag: int | None
    lag_seconds: float | None
    in_flight: int
    paused: bool
    pause_reason: str
    assigned_at: float


class PollGauges:
    def __init__(
        self,
        metrics: Metrics,
        handler: str,
        source: Source | ShareSource,
        *,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._metrics = metrics
        self._handler = handler
        self._source = source
        self._clock = clock
        self._ready = metrics.ready.labels(handler)
        self._heartbeat = metrics.heartbeat.labels(handler)
        self._silence = metrics.broker_silence.labels(handler)
        self._next_refresh = 0.0
        # consumer_lag series set here: only these are zeroed or removed when a partition goes.
        self._lag_series: set[tuple[str, str, str]] = set()
        # The partitions as of the latest refresh, replaced whole (never mutated), so that
        # the dashboard's thread reads them without a lock and the poll thread pays for
        # them once a second, not per message.
        self.rows: tuple[PartitionRow, ...] = ()
        self._ready.set(0)
        self.beat()

    def ready(self, ready: bool) -> None:
        self._ready.set(1 if ready else 0)

    def beat(self) -> None:
        """The poll thread is turning (or waiting on handlers, which is not a hang)."""
        self._heartbeat.set(self._clock.time())

    def refresh(self, partitions: Collection[PartitionState], in_flight: int) -> None:
        """Once a second: heartbeat, in flight, assigned and paused partitions, lag."""
        now = self._clock.monotonic()
        if now < self._next_refresh:
            return
        self._next_refresh = now + REFRESH_EVERY
        metrics, handler = self._metrics, self._handler
        self.beat()
        self._silence.set(round(self._source.silence(), 1))
        metrics.in_flight.labels(handler).set(in_flight)
        metrics.assigned_partitions.labels(handler).set(len(partitions))
        metrics.paused_partitions.labels(handler).set(sum(1 for s in partitions if s.paused))
        wall = self._clock.time()
        rows = []
        # Partitions come with a consumer group's source only (a share group has none).
        source = cast(Source, self._source)
        for state in partitions:
            end = source.log_end(state.topic_partition)
            unfinished = state.offsets.lowest_unfinished()
            position = unfinished
            if position is None:
                position = state.offsets.committable
            if position is None:  # nothing fetched in this assignment yet
                position = source.position(state.topic_partition)
            lag = age = None
            if end is not None and position is not None:
                lag = end - position
                series = (handler, state.topic, str(state.partition))
                metrics.consumer_lag.labels(*series).set(lag)
                age = _age(state, unfinished, lag, wall)
                if age is not None:
                    metrics.consumer_lag_seconds.labels(*series).set(age)
                self._lag_series.add(series)
            rows.append(
                PartitionRow(
                    state.topic,
                    state.partition,
                    state.offsets.committable,
                    end,
                    lag,
                    age,
                    state.in_flight,
                    state.paused,
                    state.pause_reason,
                    state.assigned_at,
                )
            )
        self.rows = tuple(rows)

    def forget(self, state: PartitionState) -> None:
        """The partition is gone: its lag is no longer this process's to report."""
        series = (self._handler, state.topic, str(state.partition))
        if series not in self._lag_series:
            return
        self._lag_series.discard(series)
        if self._metrics.multiprocess:
            # Per-process files cannot drop a series: a 0 adds nothing to the live sum.
            self._metrics.consumer_lag.labels(*series).set(0)
            self._metrics.consumer_lag_seconds.labels(*series).set(0)
        else:
            self._metrics.consumer_lag.remove(*series)
            with contextlib.suppress(KeyError):  # never set: no timestamp was read
                self._metrics.consumer_lag_seconds.remove(*series)


def _age(state: PartitionState, unfinished: int | None, lag: int, now: float) -> float | None:
    """Seconds since the oldest unfinished record of `state` was written (see the gauge's
    help); None when no timestamp is known. Drops the runs that are finished."""
    stamps = state.stamps
    if unfinished is not None:
        while len(stamps) > 1 and stamps[1][0] <= unfinished:
            stamps.popleft()
    else:
        while len(stamps) > 1:  # all finished: only the last fetched run is still of use
            stamps.popleft()
    if lag <= 0:
        return 0.0
    if not stamps:
        return None
    return max(0.0, now - stamps[0][1] / 1000)

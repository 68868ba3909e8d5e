"""The poll loops turn by turn, as arroyo's processor tests call `_run_once()`: a poller over
the in-memory source, an executor whose work the test finishes by hand, and a manual clock.
Each test calls one turn at a time and looks at what the source saw (fetches, pauses, commits)
and what the executor was asked (runs, revokes, cancels). No thread runs but the test's."""

from __future__ import annotations

import queue
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from confluent_kafka import AcknowledgeType, KafkaError

from kafkaworker import App, Message
from kafkaworker.handlers import HandlerSpec
from kafkaworker.observability.metrics import Metrics
from kafkaworker.runtime.clock import ManualClock
from kafkaworker.runtime.failures.policy import CircuitBreaker
from kafkaworker.runtime.handoff import (
    Completion,
    CompletionQueue,
    Dispatched,
    Lease,
    Outcome,
    Run,
)
from kafkaworker.runtime.poll import offset_map
from kafkaworker.runtime.poll.backpressure import WITHHOLD
from kafkaworker.runtime.poll.delayed import DelayedRetries
from kafkaworker.runtime.poll.fairness import FAIR_WAIT, FIRST_QUOTA
from kafkaworker.runtime.poll.poller import (
    COMMIT_HOLD_AFTER,
    REBALANCE_GRACE,
    OffsetCommit,
    Poller,
)
from kafkaworker.runtime.poll.share_poller import ACK_FLUSH, SharePoller
from kafkaworker.runtime.source import Partition
from kafkaworker.runtime.source.memory import MemorySource
from kafkaworker.runtime.source.memory_share import MemoryShareSource
from kafkaworker.serialization import CODECS
from kafkaworker.settings import Settings
from tests.unit.runtime_support import settings as runtime_settings

FINISHED, NOT_FINISHED = Outcome.FINISHED, Outcome.NOT_FINISHED
P0, P1 = Partition("t", 0), Partition("t", 1)


class HandExecutor:
    """An Executor that runs nothing: submit() queues, and the test says what finished
    (`finish`), which is reported on the completion queue as a worker would report it."""

    def __init__(self, completions: CompletionQueue) -> None:
        self._completions = completions
        self.queued: list[Dispatched] = []
        self.runs: list[Run] = []
        self.revoked: list[Lease] = []
        self.cancelled: list[Lease] = []
        self.closed = False
        self.recent_handler_seconds = 0.0

    def handler_seconds_p99(self, window: float = 60.0) -> float | None:
        return None

    def start(self) -> None:
        pass

    def submit(self, runs: list[Run]) -> None:
        self.runs.extend(runs)
        for _, messages in runs:
            self.queued.extend(messages)

    def revoke(self, leases: Sequence[Lease]) -> list[Dispatched]:
        for lease in leases:
            lease.revoked = True
        self.revoked.extend(leases)
        dropped = [m for m in self.queued if m.lease.revoked]
        self.queued = [m for m in self.queued if not m.lease.revoked]
        return dropped

    def cancel(self, leases: Sequence[Lease]) -> None:
        self.cancelled.extend(leases)

    def close(self, timeout: float = 1.0) -> None:
        self.closed = True

    def finish(
        self,
        partition: int,
        offsets: Sequence[int],
        outcome: Outcome = FINISHED,
        lease: Lease | None = None,
    ) -> None:
        """Report these offsets of a partition's queued messages (or of `lease`) as done."""
        picked = [
            m
            for m in self.queued
            if m.partition == partition and m.offset in offsets and lease in (None, m.lease)
        ]
        assert len(picked) == len(offsets), (partition, offsets)
        self.queued = [m for m in self.queued if m not in picked]
        self._completions.put([Completion(picked[0].lease, sorted(offsets), outcome)])


def handler(**options: Any) -> HandlerSpec:
    app = App("svc")

    def handle(msg: Message[Any]) -> None:
        pass

    app.handler("t", name="handle", codec="raw", **options)(handle)
    return app.handlers["handle"]


class Turns:
    """A stream-mode poller over a MemorySource, turned by hand."""

    def __init__(
        self,
        partitions: int = 1,
        *,
        spec: HandlerSpec | None = None,
        breaker_cooldown: float | None = None,
        retry_topic: str | None = None,
        held: Callable[[Partition], bool] | None = None,
        **setting_values: Any,
    ) -> None:
        self.clock = ManualClock()
        # A breaker that opens once half of 2+ messages in a window of 4 were dead-lettered.
        self.breaker = (
            CircuitBreaker(
                threshold=0.5,
                window=4,
                min_messages=2,
                cooldown=breaker_cooldown,
                clock=self.clock.monotonic,
            )
            if breaker_cooldown is not None
            else None
        )
        topics = {"t": partitions, **({retry_topic: 1} if retry_topic else {})}
        self.source = MemorySource(topics, clock=self.clock)
        completions: CompletionQueue = queue.SimpleQueue()
        self.executor = HandExecutor(completions)
        self.metrics = Metrics()
        settings = runtime_settings(**setting_values)
        self.poller = Poller(
            spec or handler(),
            settings,
            self.source,
            self.executor,
            completions,
            committer=OffsetCommit(
                self.source,
                handler="handle",
                interval=settings.commit_interval,
                max_metadata=settings.offset_metadata_max_bytes,
                clock=self.clock,
                metrics=self.metrics,
            ),
            codec=CODECS["raw"],
            topics=list(topics),
            delayed=DelayedRetries([retry_topic] if retry_topic else [], clock=self.clock),
            breaker=self.breaker,
            metrics=self.metrics,
            clock=self.clock,
        )
        self.poller.held_at_assignment = held
        self.poller.subscribe()
        # The group of one assigns every partition inside this first fetch, which has nothing
        # to take yet (as with librdkafka, the records come with the next fetch).
        self.poller.turn()

    def append(self, count: int, partition: int = 0, **fields: Any) -> None:
        for i in range(count):
            self.source.broker.append("t", b"%d" % i, partition=partition, **fields)

    def turn(self, times: int = 1) -> None:
        for _ in range(times):
            self.poller.turn()

    def dispatched(self, partition: int = 0) -> list[int]:
        return [m.offset for m in self.executor.queued if m.partition == partition]

    def lease(self, partition: int = 0) -> Lease:
        [state] = [s for s in self.poller.partitions if s.partition == partition]
        return state.lease


def test_a_turn_dispatches_a_fetch_in_offset_order_as_runs_of_one_partition() -> None:
    turns = Turns(2)
    turns.append(3, partition=0)
    turns.append(2, partition=1)
    turns.turn()  # the assignment arrives inside the fetch, then the records
    assert sorted(turns.dispatched(0)) == [0, 1, 2] and turns.dispatched(1) == [0, 1]
    for lease, messages in turns.executor.runs:
        assert {m.partition for m in messages} == {lease.partition.partition}
        assert [m.offset for m in messages] == sorted(m.offset for m in messages)
        assert all(m.lease is lease for m in messages)
    assert turns.poller.stats.fetched == 5
    assert {s.in_flight for s in turns.poller.partitions} == {3, 2}


def test_a_fetch_takes_no_more_than_the_handler_budget_has_room_for() -> None:
    turns = Turns(1, max_pending=4, max_pending_per_partition=100)
    turns.append(10)
    turns.turn()
    assert turns.dispatched() == [0, 1, 2, 3]
    turns.executor.finish(0, [0, 1])
    turns.turn()  # over the budget it was withholding: this turn only collects the two
    assert turns.dispatched() == [2, 3]
    turns.turn()  # under it again: room for two more
    assert turns.dispatched() == [2, 3, 4, 5]


def test_what_finished_is_committed_up_to_the_first_unfinished_offset() -> None:
    turns = Turns(commit_interval=1.0)
    turns.append(5)
    turns.turn()
    assert turns.source.committed == {P0: 0}  # the start, committed at assignment
    turns.executor.finish(0, [0, 1, 3])
    turns.turn()  # the first change after a quiet interval is committed at once
    assert turns.source.committed == {P0: 2}  # offset 2 is still running...
    assert offset_map.decode(turns.source.metadata[P0], 2) == [3]  # ...3 is finished
    turns.executor.finish(0, [2])
    turns.turn()
    assert turns.source.committed == {P0: 2}  # not again within the commit interval
    turns.clock.advance(1.0)
    turns.turn()
    assert turns.source.committed == {P0: 4} and turns.source.metadata[P0] == ""
    turns.executor.finish(0, [4])
    turns.clock.advance(1.0)
    turns.turn()
    assert turns.source.committed == {P0: 5}
    assert turns.poller.stats.finished == 5


def test_a_map_that_grows_while_the_position_stands_still_is_committed() -> None:
    turns = Turns(commit_interval=0.1)
    turns.append(4)
    turns.turn()
    turns.executor.finish(0, [1])
    turns.turn()
    turns.executor.finish(0, [3])  # offset 0 (a slow key, say) holds the position
    turns.clock.advance(0.1)
    turns.turn()
    assert turns.source.commits[-1] == {P0: 0}
    assert offset_map.decode(turns.source.metadata[P0], 0) == [1, 3]


def test_a_failed_commit_is_sent_again_with_what_is_finished_then() -> None:
    turns = Turns(commit_interval=0.1)
    turns.append(3)
    turns.turn()
    turns.source.fail_commits[P0] = KafkaError.REBALANCE_IN_PROGRESS
    turns.executor.finish(0, [0])
    turns.turn()
    assert turns.source.committed == {P0: 0}  # it failed
    turns.clock.advance(0.1)
    turns.turn()  # told of the failure: sent again, though nothing changed since
    assert turns.source.committed == {P0: 1}
    turns.clock.advance(0.1)
    commits = len(turns.source.commits)
    turns.turn(2)
    assert len(turns.source.commits) == commits  # nothing new: nothing sent


def test_an_assignment_skips_what_the_committed_offset_map_lists() -> None:
    turns = Turns(2)
    turns.append(8, partition=1)
    turns.source.revoke([P1])
    turns.turn()
    # An earlier owner finished 3, 4 and 6 while 2 and 5 ran: its commit says so.
    turns.source.committed[P1] = 2
    turns.source.metadata[P1] = offset_map.encode(2, [3, 4, 6]) or ""
    turns.source.assign([P1])
    turns.turn(2)
    assert turns.dispatched(1) == [2, 5, 7]  # only the unfinished
    assert turns.poller.stats.skipped == 3
    assert turns.metrics.offset_map_skipped.labels("handle")._value.get() == 3
    turns.executor.finish(1, [2])
    turns.turn()
    assert turns.source.committed[P1] == 5  # past the skipped 3 and 4
    assert offset_map.decode(turns.source.metadata[P1], 5) == [6]


def test_a_map_lists_what_it_inherited_until_it_is_fetched() -> None:
    turns = Turns(1, max_pending=3, poll_batch=3)
    turns.append(6)
    turns.source.revoke([P0])
    turns.turn()
    turns.source.metadata[P0] = offset_map.encode(0, [1, 4]) or ""
    turns.source.assign([P0])
    turns.turn(2)
    assert turns.dispatched() == [0, 2]  # 1 skipped; 4 not fetched yet
    turns.executor.finish(0, [0])
    turns.turn()
    # Committed at 2 (0 finished, 1 skipped): 4 is still listed, though never seen here.
    assert turns.source.committed[P0] == 2
    assert offset_map.decode(turns.source.metadata[P0], 2) == [4]


def test_a_revoke_hands_the_map_to_the_next_owner() -> None:
    turns = Turns(1)
    turns.append(5)
    turns.turn()
    first = turns.lease()
    running = turns.executor.queued.pop(0)  # offset 0 runs on...
    turns.executor.finish(0, [1, 3])  # ...while others finish
    turns.turn()
    turns.source.revoke([P0])
    turns.turn()  # revoke_timeout runs out with offset 0 still running: committed so far
    assert first.revoked and running.offset == 0
    assert turns.source.committed[P0] == 0
    assert offset_map.decode(turns.source.metadata[P0], 0) == [1, 3]
    turns.source.assign([P0])  # the next owner (here, this member again)
    turns.turn(2)
    assert turns.dispatched() == [0, 2, 4]  # nothing finished before the move runs again


def test_a_map_too_large_for_the_metadata_limit_commits_the_plain_position() -> None:
    turns = Turns(1, offset_metadata_max_bytes=24)
    turns.append(40)
    turns.turn()
    turns.executor.finish(0, list(range(1, 40, 3)))  # scattered: a map of 30-odd characters
    turns.turn()
    assert turns.source.committed == {P0: 0} and turns.source.metadata[P0] == ""
    assert turns.metrics.offset_map_fallbacks.labels("handle")._value.get() == 1
    turns.executor.finish(0, [0])
    turns.clock.advance(1.0)
    turns.turn()
    assert turns.source.committed == {P0: 2}  # finished offsets above it stay uncommitted


def test_a_map_the_broker_refuses_is_committed_again_without_it_and_maps_shrink() -> None:
    turns = Turns(1, commit_interval=0.1)
    turns.source.offset_metadata_max_bytes = 24  # a broker set lower than the setting
    turns.append(40)
    turns.turn()
    turns.executor.finish(0, list(range(1, 40, 3)))
    turns.turn()  # refused (OFFSET_METADATA_TOO_LARGE)
    assert turns.source.metadata.get(P0, "") == ""
    turns.clock.advance(0.1)
    turns.turn()
    committer = turns.poller._committer
    assert isinstance(committer, OffsetCommit) and committer.max_metadata < 24
    assert turns.source.committed == {P0: 0} and turns.source.metadata[P0] == ""
    assert turns.metrics.offset_map_fallbacks.labels("handle")._value.get() == 1
    turns.executor.finish(0, [0])
    turns.clock.advance(0.1)
    turns.turn()
    assert turns.source.committed == {P0: 2}


def test_a_turn_without_reports_commits_nothing_new() -> None:
    turns = Turns()
    turns.append(3)
    turns.turn()
    commits = len(turns.source.commits)
    turns.turn(3)
    assert len(turns.source.commits) == commits


def test_a_dead_letter_counts_as_finished_for_the_commit() -> None:
    turns = Turns()
    turns.append(2)
    turns.turn()
    turns.executor.finish(0, [0], Outcome.DEAD_LETTERED)
    turns.executor.finish(0, [1])
    turns.turn()
    assert turns.source.committed == {P0: 2}


def test_not_finished_is_never_committed_past() -> None:
    turns = Turns()
    turns.append(3)
    turns.turn()
    turns.executor.finish(0, [0], NOT_FINISHED)
    turns.executor.finish(0, [1, 2])
    turns.turn()
    assert turns.source.committed == {P0: 0}
    assert turns.poller.partitions[0].in_flight == 0


def test_a_revoke_gives_up_unstarted_work_commits_what_finished_and_forgets() -> None:
    turns = Turns(2)
    turns.append(4, partition=0)
    turns.append(2, partition=1)
    turns.turn()
    lease = turns.lease(0)
    turns.executor.finish(0, [0, 1])
    turns.source.revoke([P0])
    turns.turn()  # the revoke is delivered inside this turn's fetch
    assert turns.executor.revoked == [lease] and lease.revoked
    assert turns.source.committed[P0] == 2  # what finished before the revoke
    assert [s.partition for s in turns.poller.partitions] == [1]
    assert turns.dispatched(0) == []  # offsets 2 and 3 were handed back, never started
    assert turns.poller.stats.revoked == 1


def test_a_report_of_a_revoked_lease_is_ignored() -> None:
    turns = Turns(1)
    turns.append(3)
    turns.turn()
    old = turns.lease()
    running = turns.executor.queued.pop(0)  # started: still running when the revoke comes
    turns.source.revoke([P0])
    turns.turn()  # waits revoke_timeout on the manual clock: no real time passes
    assert turns.executor.cancelled == [old]  # revoke_timeout ran out with it running
    turns.source.assign([P0])
    turns.turn()
    assert turns.lease() is not old and turns.lease().generation > old.generation
    committed = dict(turns.source.committed)
    # The first assignment's handler returns at last: nothing is counted or committed for it.
    turns.executor._completions.put([Completion(old, [running.offset], FINISHED)])
    turns.turn()
    assert turns.source.committed == committed
    assert turns.poller.partitions[0].in_flight == len(turns.dispatched())


def test_a_lost_partition_commits_nothing() -> None:
    turns = Turns()
    turns.append(3)
    turns.turn()
    turns.executor.finish(0, [0, 1])
    turns.source.lose([P0])
    commits = len(turns.source.commits)
    turns.turn()  # the reports and the loss arrive in one turn: the loss first
    assert len(turns.source.commits) == commits
    assert turns.poller.partitions == [] and turns.poller.stats.lost == 1


def test_a_reassigned_partition_starts_again_from_its_commit() -> None:
    turns = Turns()
    turns.append(4)
    turns.turn()
    turns.executor.finish(0, [0, 1])
    turns.turn()
    turns.source.revoke([P0])
    turns.turn()
    turns.source.assign([P0])
    turns.turn(2)
    assert turns.dispatched() == [2, 3]  # from the committed position, under a new lease


def test_a_fast_handler_over_its_partition_limit_is_withheld_from_then_caught_up() -> None:
    turns = Turns(1, max_pending_per_partition=4, max_pending=100, poll_batch=4)
    turns.append(8)
    turns.turn()
    assert turns.dispatched() == [0, 1, 2, 3]
    turns.turn()  # at the limit: records are withheld, not fetched, and nothing is paused
    assert turns.dispatched() == [0, 1, 2, 3]
    assert turns.poller.stats.withheld == 1 and turns.source.paused == set()
    turns.executor.finish(0, [0, 1, 2])
    turns.turn(2)
    assert turns.dispatched() == [3, 4, 5, 6, 7]
    assert turns.source.paused == set()  # caught up within WITHHOLD: never paused


def test_a_partition_still_over_its_limit_after_withholding_is_paused_then_resumed() -> None:
    turns = Turns(1, max_pending_per_partition=4, max_pending=100, poll_batch=4)
    turns.append(8)
    turns.turn(2)
    assert turns.poller.stats.withheld == 1
    turns.clock.advance(WITHHOLD)
    turns.turn()
    assert turns.source.paused == {P0}
    assert turns.poller.partitions[0].pause_reason == "backpressure"
    turns.executor.finish(0, [0, 1])  # down to half the limit
    turns.turn()
    assert turns.source.paused == set()


def test_a_backlog_is_handed_over_a_fair_quota_of_each_partition_at_a_time() -> None:
    turns = Turns(2, spec=handler(concurrency=2))
    turns.executor.recent_handler_seconds = 0.01  # 10 ms a message, two workers
    quota = int(FAIR_WAIT * 2 / (2 * 0.01))  # a quarter second of work for the two
    turns.append(100, partition=0)
    turns.append(100, partition=1)
    turns.turn(2)
    # Both partitions have their quota with the executor, in offset order; the rest waits.
    assert turns.dispatched(0) == list(range(quota))
    assert turns.dispatched(1) == list(range(quota))
    assert turns.poller.stats.fetched == 200
    turns.executor.finish(1, [0, 1, 2])
    turns.turn()
    # Three finished: not topped up yet (runs of a handful cost the executor per run).
    assert turns.dispatched(1) == list(range(3, quota))
    assert turns.source.committed[P1] == 3
    half = quota // 2
    turns.executor.finish(1, list(range(3, half)))
    turns.turn()
    assert turns.dispatched(1) == list(range(half, quota + half))  # half the quota at once
    assert turns.dispatched(0) == list(range(quota))


def test_a_handler_of_unknown_speed_starts_with_a_small_quota() -> None:
    turns = Turns(2)
    turns.append(100, partition=0)
    turns.append(100, partition=1)
    turns.turn()
    assert len(turns.dispatched(0)) == len(turns.dispatched(1)) == FIRST_QUOTA


def test_a_revoke_drops_the_backlog_unstarted_and_commits_nothing_past_it() -> None:
    turns = Turns(2, spec=handler(concurrency=1))
    turns.executor.recent_handler_seconds = 0.05
    turns.append(20, partition=0)
    turns.append(20, partition=1)
    turns.turn()
    waiting = 20 - len(turns.dispatched(0))
    assert waiting > 0
    turns.executor.finish(0, turns.dispatched(0))
    turns.source.revoke([P0])
    turns.turn()
    assert turns.source.committed[P0] == 20 - waiting  # not past the backlog
    assert turns.poller._fair.waiting == 20 - len(turns.dispatched(1))  # only P1's waits
    turns.source.assign([P0])
    turns.turn(2)
    assert turns.dispatched(0)[0] == 20 - waiting  # fetched again, from the commit


def test_a_retry_record_is_held_until_due_with_its_partition_paused() -> None:
    retry = "t.retry.5s"
    turns = Turns(1, spec=handler(retry_topics=[5.0], dlq="t.dlq"), retry_topic=retry)
    due_ms = int((turns.clock.time() + 5) * 1000)
    turns.source.broker.append(retry, b"x", headers=[("kw.retry.due", b"%d" % due_ms)])
    turns.turn()
    retry_partition = Partition(retry, 0)
    assert [m for m in turns.executor.queued if m.topic == retry] == []
    turns.turn()
    assert retry_partition in turns.source.paused
    turns.clock.advance(5)
    turns.turn()
    assert [m.offset for m in turns.executor.queued if m.topic == retry] == [0]
    assert retry_partition not in turns.source.paused


def test_an_open_breaker_pauses_every_partition_until_its_cooldown_is_over() -> None:
    turns = Turns(2, spec=handler(dlq="t.dlq"), breaker_cooldown=10)
    assert turns.breaker is not None
    turns.append(4)
    turns.turn()
    turns.executor.finish(0, [0, 1, 2], Outcome.DEAD_LETTERED)
    turns.turn()
    assert turns.breaker.open
    assert turns.source.paused == {P0, P1}
    assert {s.pause_reason for s in turns.poller.partitions} == {"circuit breaker open"}
    turns.clock.advance(10)
    turns.turn()
    assert not turns.breaker.open and turns.source.paused == set()


def test_an_operator_hold_pauses_until_released_whatever_backpressure_says() -> None:
    turns = Turns(2)
    turns.append(2)
    turns.turn()
    assert turns.poller.hold(P1, held=True)
    turns.turn()
    assert turns.source.paused == {P1}
    assert [s.pause_reason for s in turns.poller.partitions if s.partition == 1] == ["operator"]
    assert not turns.poller.hold(Partition("t", 7), held=True)  # not assigned here
    turns.poller.hold(P1, held=False)
    turns.turn()
    assert turns.source.paused == set()


def test_a_partition_held_at_its_assignment_is_paused_before_its_first_fetch() -> None:
    turns = Turns(2, held=lambda partition: partition == P1)  # a fleet pause names P1
    assert turns.source.paused == {P1}  # paused at the end of the turn that assigned it
    turns.append(3, partition=0)
    turns.append(3, partition=1)
    turns.turn(2)
    assert turns.dispatched(1) == [] and sorted(turns.dispatched(0)) == [0, 1, 2]
    assert [s.pause_reason for s in turns.poller.partitions if s.partition == 1] == ["operator"]


def test_shutdown_commits_what_finished_in_time_and_names_what_did_not() -> None:
    turns = Turns(1)
    turns.append(4)
    turns.turn()
    turns.executor.finish(0, [0, 1])
    turns.poller.shutdown()
    assert turns.source.committed == {P0: 2}
    assert turns.poller.unfinished_at_exit == {}  # 2 and 3 were never started: given back
    assert turns.executor.closed and turns.source.closed


def test_shutdown_leaves_running_work_uncommitted_when_its_time_runs_out() -> None:
    turns = Turns(1)
    turns.append(2)
    turns.turn()
    running = turns.executor.queued[0]
    turns.executor.queued = turns.executor.queued[1:]  # offset 0 has started
    turns.poller.shutdown()
    assert running.lease.revoked
    assert turns.poller.unfinished_at_exit == {"t[0]": 1}
    assert turns.source.committed == {P0: 0}
    assert set(turns.executor.cancelled) == {running.lease}


def test_the_gauges_follow_the_clock_once_a_second() -> None:
    turns = Turns()
    turns.clock.advance(1.0)  # the assignment's turn refreshed them: a second on
    turns.append(3)
    turns.turn()  # fetches 3 and refreshes: 3 in flight
    in_flight = turns.metrics.in_flight.labels("handle")
    assert in_flight._value.get() == 3
    turns.executor.finish(0, [0, 1, 2])
    turns.turn()
    assert in_flight._value.get() == 3  # refreshed at most once a second
    turns.clock.advance(1.0)
    turns.turn()
    assert in_flight._value.get() == 0


# -- queue mode: the share group's loop -------------------------------------------------------


class ShareTurns:
    """A queue-mode poller over a MemoryShareSource, turned by hand."""

    def __init__(
        self,
        *,
        max_records: int = 10,
        concurrency: int = 8,
        source: MemoryShareSource | None = None,
        **setting_values: Any,
    ) -> None:
        self.clock = ManualClock()
        self.source = source or MemoryShareSource(
            {"t": 2}, max_records=max_records, clock=self.clock
        )
        completions: CompletionQueue = queue.SimpleQueue()
        self.executor = HandExecutor(completions)
        settings: Settings = runtime_settings(**setting_values)
        self.metrics = Metrics()
        self.poller = SharePoller(
            handler(mode="queue", concurrency=concurrency),
            settings,
            self.source,
            self.executor,
            completions,
            codec=CODECS["raw"],
            group=self.source.config,
            metrics=self.metrics,
            clock=self.clock,
        )
        self.poller.subscribe()

    def acks(self) -> list[tuple[int, int, str]]:
        return [(p.partition, o, name) for p, o, name in self.source.acknowledged]


def test_a_share_fetch_is_dispatched_with_its_delivery_count_as_the_attempt() -> None:
    turns = ShareTurns()
    turns.source.broker.append("t", b"a", partition=0)
    turns.source.broker.append("t", b"b", partition=1)
    turns.poller.turn()
    assert sorted((m.partition, m.offset, m.attempt) for m in turns.executor.queued) == [
        (0, 0, 1),
        (1, 0, 1),
    ]
    assert turns.poller.in_flight == 2


def test_no_fetch_while_a_record_of_the_last_one_is_unacknowledged() -> None:
    turns = ShareTurns()
    for i in range(3):
        turns.source.broker.append("t", b"%d" % i, partition=0)
    turns.poller.turn()
    turns.executor.finish(0, [0, 1])
    turns.poller.turn()  # collects and acknowledges; the client would refuse a fetch now
    assert turns.source.fetches == [3]
    turns.executor.finish(0, [2])
    turns.poller.turn()
    turns.poller.turn()  # fetches again (nothing there), carrying the acknowledgements
    assert turns.acks() == [(0, 0, "accept"), (0, 1, "accept"), (0, 2, "accept")]


@pytest.mark.parametrize(
    ("outcome", "ack"),
    [
        (Outcome.FINISHED, "accept"),
        (Outcome.DEAD_LETTERED, "reject"),
        (Outcome.REJECTED, "reject"),
        (Outcome.RELEASED, "release"),
        (Outcome.NOT_FINISHED, "release"),
    ],
)
def test_each_outcome_is_acknowledged_as_the_share_group_needs(outcome: Outcome, ack: str) -> None:
    turns = ShareTurns()
    turns.source.broker.append("t", b"x", partition=0)
    turns.poller.turn()
    turns.executor.finish(0, [0], outcome)
    turns.poller.turn()
    turns.poller.turn()  # the next fetch sends it
    assert turns.acks() == [(0, 0, ack)]
    kind = {"accept": AcknowledgeType.ACCEPT, "reject": AcknowledgeType.REJECT}.get(
        ack, AcknowledgeType.RELEASE
    )
    assert turns.poller.acknowledged[ack] == 1, kind


def test_acknowledgements_go_out_every_ack_flush_while_a_fetch_is_being_worked_through() -> None:
    turns = ShareTurns()
    for i in range(2):
        turns.source.broker.append("t", b"%d" % i, partition=0)
    turns.poller.turn()
    turns.clock.advance(ACK_FLUSH)
    turns.executor.finish(0, [0], Outcome.RELEASED)
    turns.poller.turn()  # offset 1 still runs: the release is sent now, not with the fetch
    assert turns.acks() == [(0, 0, "release")]


def test_records_held_longer_than_their_lock_are_counted_once_as_lock_expiries() -> None:
    turns = ShareTurns()
    turns.source.broker.append("t", b"x", partition=0)
    turns.poller.turn()
    turns.clock.advance(turns.source.config.lock_seconds)
    turns.poller.turn()
    turns.poller.turn()
    assert turns.metrics.lock_expiries.labels("handle")._value.get() == 1


def test_share_shutdown_releases_what_never_started_and_what_still_runs() -> None:
    turns = ShareTurns()
    for i in range(3):
        turns.source.broker.append("t", b"%d" % i, partition=0)
    turns.poller.turn()
    turns.executor.queued = turns.executor.queued[1:]  # offset 0 is running
    turns.poller.shutdown()
    assert sorted(turns.acks()) == [(0, 0, "release"), (0, 1, "release"), (0, 2, "release")]
    assert turns.poller.unfinished_at_exit == {"share group memory-share-group": 1}
    assert turns.source.closed and turns.executor.closed


def test_a_fetch_larger_than_asked_is_shared_out_a_slice_at_a_time() -> None:
    """The broker acquires whole record batches: a fetch of 4 records can bring 30. The
    member works on 4, keeps what its workers start within SHARE_HORIZON, and releases the
    rest a slice at a time, at SHARE_PEERS times its own pace."""
    turns = ShareTurns(
        max_records=100, concurrency=1, kafka={"share_consumer": {"max.poll.records": 4}}
    )
    for i in range(30):
        turns.source.broker.append("t", b"%d" % i, partition=0)
    turns.poller.turn()
    assert sorted(m.offset for m in turns.executor.queued) == [0, 1, 2, 3]
    assert turns.poller.in_flight == 30  # all 30 acquired: 26 held, not started
    turns.poller.turn()
    assert turns.acks() == []  # the handler's pace is not known yet: nothing released
    turns.executor.recent_handler_seconds = 0.1  # 10 a second on its one worker
    turns.clock.advance(0.1)
    turns.poller.turn()  # 2 x 10/s x 0.1 s: two may go; it keeps 10 (a second of work)
    assert turns.acks() == [(0, 28, "release"), (0, 29, "release")]
    turns.clock.advance(1.0)
    turns.poller.turn()  # at most a fetch size at a time
    assert turns.acks()[2:] == [(0, o, "release") for o in range(24, 28)]
    turns.executor.finish(0, [0, 1])
    turns.poller.turn()  # room for two: the next of the surplus, in order
    assert sorted(m.offset for m in turns.executor.queued) == [2, 3, 4, 5]
    for _ in range(10):
        turns.clock.advance(1.0)
        turns.poller.turn()
    # Released down to what it keeps: a second of work beyond the fetch size's four.
    assert turns.poller.shared_out == 30 - 4 - 2 - 10 == 14
    assert turns.poller.in_flight == 14


@pytest.mark.parametrize(("limit", "shared_until"), [(5, 2), (3, 1), (2, 0)])
def test_a_record_is_released_unstarted_only_while_two_deliveries_are_left(
    limit: int, shared_until: int
) -> None:
    """Every release unstarted costs a record a delivery (the broker counts acquisitions):
    a record is shared out at its first or second delivery only, and only while at least two
    deliveries are left after it (released at the limit, it would be archived unhandled)."""
    sizes = {"share_consumer": {"max.poll.records": 2}}
    source = MemoryShareSource({"t": 1}, max_records=100, delivery_limit=limit)
    for i in range(6):
        source.broker.append("t", b"%d" % i, partition=0)
    for delivery in range(1, limit + 1):
        turns = ShareTurns(source=source, kafka=sizes)
        turns.poller.turn()
        held = len(turns.poller._surplus)
        assert held == (4 if delivery <= shared_until else 0), delivery
        turns.poller.shutdown()  # all six back unstarted: their next delivery
        source.closed = False
        if delivery == limit - 1:
            break


def test_shutdown_releases_a_fetchs_surplus_with_what_never_started() -> None:
    turns = ShareTurns(max_records=100, kafka={"share_consumer": {"max.poll.records": 2}})
    for i in range(6):
        turns.source.broker.append("t", b"%d" % i, partition=0)
    turns.poller.turn()
    turns.poller.shutdown()
    assert sorted(turns.acks()) == [(0, o, "release") for o in range(6)]
    assert turns.poller.unfinished_at_exit == {}


def test_a_partition_whose_commits_go_unanswered_takes_no_new_work_until_they_are() -> None:
    # A broker killed: its coordinator answers no commit, and what is finished meanwhile runs
    # again once the session times out (tests/faults/test_broker_faults.py).
    turns = Turns(2, spec=handler(concurrency=1))
    turns.clock.advance(REBALANCE_GRACE)  # the assignment is not that recent
    turns.executor.recent_handler_seconds = 0.05  # a small quota: the rest waits on this side
    turns.append(20, partition=0)
    turns.append(20, partition=1)
    turns.turn()
    turns.source.unanswered.add(P0)
    first = turns.dispatched(0)
    turns.executor.finish(0, first)
    turns.executor.finish(1, turns.dispatched(1))
    turns.turn()  # both committed (P1 acknowledged, P0 not) and topped up from their backlogs
    topped_up = turns.dispatched(0)
    assert topped_up and turns.source.paused == set()
    turns.clock.advance(COMMIT_HOLD_AFTER)
    turns.turn()
    assert turns.source.paused == {P0}
    [held] = [s for s in turns.poller.partitions if s.partition == 0]
    assert held.pause_reason == "commits not acknowledged"
    # What the executor holds runs on; no more of P0 is handed over, P1 goes on.
    turns.executor.finish(0, topped_up)
    turns.executor.finish(1, turns.dispatched(1))
    turns.turn(2)
    assert turns.dispatched(0) == [] and turns.dispatched(1)
    assert P0 not in turns.source.committed or turns.source.committed[P0] == 0
    # The coordinator is back: the commits that waited are made, and P0 takes work again.
    turns.source.answer_commits()
    turns.turn(2)
    assert turns.source.paused == set() and turns.dispatched(0)
    assert turns.source.committed[P0] == len(first) + len(topped_up)
    assert turns.poller.stats.commit_holds == 1
    assert turns.metrics.commit_holds.labels("handle")._value.get() == 1


def test_no_partition_is_held_for_its_commits_just_after_a_rebalance() -> None:
    # The coordinator leaves the commits of partitions kept through a cooperative rebalance
    # unanswered until it is over: that is no outage.
    turns = Turns(2, spec=handler(concurrency=1))
    turns.append(20, partition=0)
    turns.turn()
    turns.clock.advance(REBALANCE_GRACE)
    turns.source.unanswered.add(P0)
    turns.executor.finish(0, turns.dispatched(0)[:1])
    turns.turn()  # P0's commit sent, unanswered
    turns.source.revoke([P1])
    turns.turn()  # the revoke comes inside this turn's fetch
    turns.clock.advance(COMMIT_HOLD_AFTER)
    turns.turn()
    assert turns.source.paused == set()
    turns.clock.advance(REBALANCE_GRACE)
    turns.turn()
    assert turns.source.paused == {P0}

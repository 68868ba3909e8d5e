"""The poll thread: the ONLY thread that touches the source. It never runs user code.

PollLoop is what the two poll threads share, the stream mode's (Poller, here: a consumer
group, offsets, pauses, rebalances) and the queue mode's (share_poller.py: a share group, a
fetch at a time, acknowledgements). The skeleton is written once: subscribe, turn until asked
to stop, then shut down: give up what was not started, serve the group while the running
handlers finish within shutdown_timeout, take their reports, cancel what still runs, say what
did not finish, make what is finished durable, close. Each loop fills in what is its own.

The stream mode's turn fetches a batch, hands it to the executor, takes back what finished,
hands the positions that became committable to the committer, and pauses or resumes
partitions for backpressure. It keeps polling while partitions are paused, so a slow handler
never costs the group membership (`max.poll.interval.ms`).

Commits: the poll thread hands the committer the partitions whose finished offsets changed
(their position, every offset below which is finished, or what is finished above it).
OffsetCommit, the default, commits each one's position with the offset map of what is
finished above it in the commit's metadata (poll/offset_map.py), asynchronously, at most once
per `commit_interval`; revoke and shutdown commit synchronously. Only positions that
PartitionOffsets reports are ever committed, never what the client merely handed out. A
commit that fails (a rebalance in progress, a coordinator moving) is told back by the source
and committed again at the next interval with what is finished then: a first version that
committed from the poll thread without that retry let a partition that received nothing more
keep an old position until its next revoke (a fault test caught it). Not librdkafka's
auto-commit of its offset store, which retries by itself: it commits a stored offset only
when the offset moved, never a change of metadata alone, and under key ordering the map
grows while one slow key holds the position. The other way the Committer seam is filled is
exactly_once's (poll/transactions.py, TransactionalCommit): a producer transaction commits
the plain contiguous position with the writes of the messages below it, no offset map (a
message finished above the position has its writes held, so a map must not list it; the
reasons are written there). Its tick() may give back partitions to rewind (an aborted
transaction); OffsetCommit's never does.
"""

from __future__ import annotations

import queue
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog
from confluent_kafka import KafkaError, KafkaException

from kafkaworker.errors import KafkaWorkerError
from kafkaworker.handlers import HandlerSpec
from kafkaworker.observability.metrics import Metrics
from kafkaworker.runtime.clock import SYSTEM_CLOCK, Clock
from kafkaworker.runtime.failures.policy import CircuitBreaker
from kafkaworker.runtime.handoff import (
    Completion,
    CompletionQueue,
    Executor,
    Lease,
    Outcome,
    Run,
    not_finished,
)
from kafkaworker.runtime.poll import offset_map
from kafkaworker.runtime.poll.backpressure import Backpressure
from kafkaworker.runtime.poll.delayed import DelayedRetries
from kafkaworker.runtime.poll.fairness import FairDispatch
from kafkaworker.runtime.poll.gauges import PartitionRow, PollGauges
from kafkaworker.runtime.poll.partitions import Intake, PartitionOffsets, PartitionState
from kafkaworker.runtime.poll.pausing import Pausing
from kafkaworker.runtime.source import (
    REBALANCING,
    OffsetAndMetadata,
    Partition,
    Record,
    ShareSource,
    Source,
    TransactionalSource,
)
from kafkaworker.serialization import Codec
from kafkaworker.settings import Settings

log = structlog.get_logger("kafkaworker.poller")
commit_log = structlog.get_logger("kafkaworker.commit")

NOT_FINISHED, DEAD_LETTERED = Outcome.NOT_FINISHED, Outcome.DEAD_LETTERED

# How long one fetch waits when there is no work out. With work out, completions must be
# picked up promptly (commits, resuming paused partitions), so it waits less: a completion
# waits for the end of the fetch's wait, and its commit with it. At 20 ms, kill -9 under a
# backlog repeated 1.8x what it did at 5 ms (commit_interval 0.01 s: 132 against 71 of
# 4,000, three runs each, tests/faults/test_delivery.py), for one more wake-up of the poll
# thread every 5 ms while handlers run and no record arrives.
_IDLE_POLL = 0.2
_BUSY_POLL = 0.005


# How long a shutdown's drain waits for reports at a time, serving the group in between.
_DRAIN_SLICE = 0.05

# A partition whose commit the group coordinator has not acknowledged for this long takes no
# new work (it is paused and its fair-dispatch backlog is kept back; what the executor holds
# runs on) until a commit of it is acknowledged. Work finished while no commit can be made
# durable is all run again once the partitions are lost, which is what a dead coordinator
# leads to when the member's session times out: with the broker killed right after the
# worker had prefetched a 13 s outage's backlog, the worker went on handling it for the 5.5 s
# until its session timed out, and 19,331 of the 20,093 messages run again at that kill had
# been finished after the broker died (tests/faults/test_broker_faults.py, docs/
# reliability.md). An acknowledgement takes milliseconds when all is well (the slowest in a
# debug log here: 160 ms, at start-up under a backlog), so a healthy group is not held; a
# coordinator that moves to another broker holds work for as long as the move takes, work
# that would otherwise run again if the member's partitions were lost meanwhile. With the
# hold, a kill repeats what was finished in the last commit interval before it and about
# 0.5-0.7 s after it (1,500-5,600 messages per kill at 3,500-6,500 msg/s).
COMMIT_HOLD_AFTER = 0.5
# Nor is a partition held for this long after a rebalance callback: the coordinator, alive,
# leaves the commits of partitions kept through a cooperative rebalance unanswered until the
# rebalance is over (about 1 s after the first callback in test_offset_map.py, which without
# this held the first member's kept partitions 0.43-0.47 s, their prefetch dropped by the
# pause). The price: a coordinator that dies within this of a rebalance is found out later.
REBALANCE_GRACE = 1.5


class PollLoop(ABC):
    """One handler's poll thread; owns its source and its stop path."""

    def __init__(
        self,
        spec: HandlerSpec,
        settings: Settings,
        source: Source | ShareSource,
        executor: Executor,
        completions: CompletionQueue,
        *,
        metrics: Metrics | None,
        clock: Clock,
    ) -> None:
        self.spec = spec
        self.settings = settings
        self._executor = executor
        self._completions = completions
        self._source = source
        self._metrics = metrics = metrics or Metrics()
        self._clock = clock
        self._gauges = PollGauges(metrics, spec.name, source, clock=clock)
        self._consumed = metrics.consumed.labels(spec.name)
        self._finished = metrics.finished.labels(spec.name)
        self._stopping = threading.Event()
        # When a shutdown's drain gives up on running handlers (infinity until it starts).
        self._shutdown_deadline = float("inf")
        # Messages still running when shutdown_timeout ran out (not committed or released:
        # delivered again), by partition or group, for the Runner's last line.
        self.unfinished_at_exit: dict[str, int] = {}

    # -- lifecycle (called from the HandlerRuntime) --------------------------------------------

    def request_stop(self) -> None:
        self._stopping.set()

    def run(self) -> None:
        """The poll thread's body: subscribe, turn until asked to stop, then shut down. (A
        test drives the same three steps itself, one turn at a time.)"""
        self.subscribe()
        try:
            while not self._stopping.is_set():
                self.turn()
        finally:
            self.shutdown()

    @abstractmethod
    def turn(self) -> None:
        """One turn of the loop."""

    # -- what each loop fills in ---------------------------------------------------------------

    @abstractmethod
    def subscribe(self) -> None:
        """Join the group (the first step of run())."""

    @abstractmethod
    def _leases(self) -> list[Lease]:
        """The leases work may still run on."""

    @abstractmethod
    def _collect(self, completions: Iterable[Completion]) -> None:
        """Take reported completions into account."""

    @abstractmethod
    def _outstanding(self) -> int:
        """Messages handed to the executor and not reported back."""

    @abstractmethod
    def _stop_taking(self) -> None:
        """Shutdown begins: no more work starts."""

    @abstractmethod
    def _serve(self) -> None:
        """Serve the group while running handlers finish (a shutdown's drain)."""

    @abstractmethod
    def _left_running(self) -> dict[str, int]:
        """What still runs after the drain (given up: delivered again), by partition or
        group; said in the log."""

    @abstractmethod
    def _make_durable(self, deadline: float) -> None:
        """Shutdown: make what is finished durable (commit, acknowledge)."""

    @abstractmethod
    def _close(self) -> None:
        """Close the source."""

    # -- shared ----------------------------------------------------------------------------------

    def _drain(self, timeout: float | None = None) -> list[Completion]:
        """Everything reported so far; with a timeout, wait that long for the first report."""
        done: list[Completion] = []
        try:
            if timeout is not None:
                first: list[Completion] = self._clock.get(self._completions, timeout)
                done.extend(first)
            while True:
                done.extend(self._completions.get_nowait())
        except queue.Empty:
            pass
        return done

    def _give_up_unstarted(self, leases: list[Lease]) -> int:
        """Revoke leases: their queued, unstarted messages come back from the executor and
        are accounted as not finished at once; how many."""
        dropped = self._executor.revoke(leases)
        self._collect(not_finished(dropped))
        return len(dropped)

    def shutdown(self) -> None:
        """Stop taking work, finish what runs within shutdown_timeout, make it durable, close."""
        self._gauges.ready(False)  # draining: not ready any more
        clock = self._clock
        self._shutdown_deadline = deadline = clock.monotonic() + self.settings.shutdown_timeout
        try:
            self._stop_taking()
            while self._outstanding() and clock.monotonic() < deadline:
                self._gauges.beat()  # waiting on handlers is not a hang
                self._serve()
                self._collect(self._drain(timeout=_DRAIN_SLICE))
            self._collect(self._drain())
            self._executor.cancel(self._leases())
            self.unfinished_at_exit = self._left_running()
            self._make_durable(deadline)
        finally:
            self._close()
            self._executor.close()


@dataclass
class PollerStats:
    """Counters written by the poll thread; read by tests and benchmarks."""

    fetched: int = 0
    finished: int = 0
    assigned: int = 0
    revoked: int = 0
    lost: int = 0
    pauses: int = 0
    withheld: int = 0  # times the poll thread stopped taking records for a limit
    skipped: int = 0  # records an offset map said were finished: not handled again
    commit_holds: int = 0  # times partitions were held because commits went unacknowledged


class Poller(PollLoop):
    """Drives one source for one handler; owns the source and its stop path. It is also the
    source's AssignmentListener: rebalance callbacks run on this thread, inside fetch()."""

    _source: Source

    def __init__(
        self,
        spec: HandlerSpec,
        settings: Settings,
        source: Source,
        executor: Executor,
        completions: CompletionQueue,
        *,
        committer: Committer,
        codec: Codec,
        topics: Sequence[str],
        delayed: DelayedRetries,
        breaker: CircuitBreaker | None = None,
        metrics: Metrics | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        super().__init__(
            spec, settings, source, executor, completions, metrics=metrics, clock=clock
        )
        self._committer = committer
        self._topics = list(topics)
        self._delayed = delayed
        self._breaker = breaker
        self._backpressure = Backpressure(
            settings.max_pending, settings.max_pending_per_partition, clock=clock
        )
        self._pausing = Pausing(
            self._backpressure, delayed, breaker, metrics=self._metrics, handler=spec.name
        )
        self._partitions: dict[Partition, PartitionState] = {}
        # How much of each partition the executor holds at once (fairness under a backlog).
        self._fair = FairDispatch(
            concurrency=spec.concurrency,
            max_per_partition=settings.max_pending_per_partition,
            min_quota=spec.batch.max_size if spec.batch else 1,
        )
        # The leases held now, to their partitions: a completion whose lease is not here is
        # of an earlier assignment (the partition was let go), and is ignored.
        self._leased: dict[Lease, PartitionState] = {}
        self._generation = 0  # assignments so far: each lease's generation
        self._intake = Intake(
            self._partitions, codec, delayed, topics=self._topics, handler=spec.name
        )
        # Set once shutdown committed: the revoke that closing the source triggers then only
        # forgets (waiting and committing again would delay leaving the group).
        self._closed_out = False
        # Messages handed to the executor and not yet reported, over all partitions; and
        # whether anything changed this turn (backpressure is only re-judged then).
        self._in_flight = 0
        self._changed = False
        self.stats = PollerStats()
        # Whether a partition is to be held by an operator from its assignment on (a fleet
        # pause in force); set by ProcessStatus, read on this thread in on_assign.
        self.held_at_assignment: Callable[[Partition], bool] | None = None
        # When a rebalance callback last came (monotonic): see REBALANCE_GRACE.
        self._rebalanced_at = float("-inf")

    @property
    def partitions(self) -> list[PartitionState]:
        """The partitions assigned now."""
        return list(self._partitions.values())

    @property
    def partition_rows(self) -> tuple[PartitionRow, ...]:
        """The assigned partitions as of the last gauge refresh (at most a second old)."""
        return self._gauges.rows

    # -- operator actions (called from the dashboard's thread, applied on this one) ---------

    def hold(self, partition: Partition, held: bool) -> bool:
        """Pause (held) or resume an assigned partition for an operator, at the next turn;
        False when it is not assigned here. Held until resumed, or until it is revoked."""
        if partition not in self._partitions:
            return False
        holds = self._pausing.operator_held
        if held:
            holds.add(partition)
        else:
            holds.discard(partition)
        # Set after the hold: the turn that clears it reads the holds after clearing it.
        self._changed = True
        return True

    def force_breaker(self, open_: bool) -> bool:
        """Open (held open) or close the handler's circuit breaker at the next turn; False
        when the handler has none (no DLQ, or circuit_breaker.enabled is false)."""
        if self._breaker is None:
            return False
        self._pausing.breaker_request = "open" if open_ else "close"
        return True

    def subscribe(self) -> None:
        self._source.subscribe(self._topics, self)

    # -- one turn ---------------------------------------------------------------------------

    def turn(self) -> None:
        backpressure = self._backpressure
        breaker = self._breaker
        fair = self._fair
        fair.update(len(self._partitions), self._executor.recent_handler_seconds)
        if backpressure.withholding:
            # Over a limit: take no records for now; finish what is out.
            self._collect(self._drain(timeout=_BUSY_POLL))
        else:
            busy = (
                self._in_flight > 0
                or backpressure.over_budget
                or bool(self._delayed)
                or (breaker is not None and breaker.open)
            )
            # No more than the handler's budget has room for: a large batch must not
            # overshoot a small max_pending.
            room = self.settings.max_pending - self._in_flight - fair.waiting
            take = max(1, min(self.settings.poll_batch, room))
            records = self._source.fetch(_BUSY_POLL if busy else _IDLE_POLL, take)
            if records:
                self._dispatch(records)
            if self._delayed:
                self._submit(self._delayed.due())
            self._collect(self._drain())
        held = self._committer.unacknowledged(COMMIT_HOLD_AFTER)
        if held and self._clock.monotonic() - self._rebalanced_at < REBALANCE_GRACE:
            held = set()
        if held != self._pausing.commit_held:
            self._hold_for_commits(held)
        if fair.waiting:
            states = list(self._partitions.values())
            if held:
                states = [s for s in states if s.topic_partition not in held]
            self._hand_over(fair.release(states))
        if self._changed or breaker is not None or backpressure.withholding:
            self._changed = False
            self._apply_pauses()
        rewind = self._committer.tick()
        if rewind:
            self._rewind(rewind)
        self._gauges.refresh(self._partitions.values(), self._in_flight)

    def _dispatch(self, batch: list[Record]) -> None:
        taken = self._intake.take(batch)
        if taken.tracked:
            self.stats.fetched += taken.tracked
            self._consumed.inc(taken.tracked)
        if taken.held:
            self._changed = True  # their partitions must be paused now
        if taken.skipped:
            self._skipped(taken.skipped)
        # Hand over what was counted in flight before raising, or shutdown would wait for it.
        self._submit(taken.runs)
        if taken.fatal is not None:
            raise KafkaException(taken.fatal)

    def _submit(self, runs: list[Run]) -> None:
        """Hand runs to the executor as far as each partition's fair quota allows; the rest
        waits in its backlog."""
        if runs:
            self._hand_over(self._fair.admit(runs, self._leased))

    def _hand_over(self, runs: list[Run]) -> None:
        """Hand runs to the executor, counted in flight until they are reported back."""
        if not runs:
            return
        count = 0
        leased = self._leased
        for lease, messages in runs:
            leased[lease].in_flight += len(messages)
            count += len(messages)
        self._in_flight += count
        self._changed = True
        self._executor.submit(runs)

    # -- completions -------------------------------------------------------------------------

    def _collect(self, completions: Iterable[Completion]) -> None:
        """Mark finished offsets; stage the positions that became committable."""
        touched: set[PartitionState] = set()
        finished = returned = 0
        breaker = self._breaker
        leased = self._leased
        for lease, offsets, outcome in completions:
            state = leased.get(lease)
            if state is None:
                continue  # from an earlier assignment of the partition: not ours to count
            count = len(offsets)
            state.in_flight -= count
            returned += count
            if outcome != NOT_FINISHED:
                state.offsets.finish_run(offsets)
                touched.add(state)
                finished += count
                if breaker is not None:
                    breaker.record(outcome == DEAD_LETTERED, count)
        if finished:
            self.stats.finished += finished
            self._finished.inc(finished)
        if returned:
            self._in_flight -= returned
            self._changed = True
        for state in touched:
            # Staged whether or not the position moved: what is finished above it did.
            state.offsets.advance()
            self._committer.stage(state.topic_partition, state.offsets)

    def _skipped(self, states: list[PartitionState]) -> None:
        """Records skipped at intake, finished before this assignment (the offset map)."""
        skipped = self._intake.skipped - self.stats.skipped
        self.stats.skipped = self._intake.skipped
        self._metrics.offset_map_skipped.labels(self.spec.name).inc(skipped)
        for state in states:
            # The map is the one committed: only a position moved past a gap is news.
            if state.offsets.advance() is not None:
                self._committer.stage(state.topic_partition, state.offsets)

    def _commit_now(self, states: Iterable[PartitionState]) -> None:
        self._committer.commit_now({s.topic_partition: s.offsets for s in states})

    def _wait_in_flight(self, states: list[PartitionState], timeout: float) -> None:
        deadline = self._clock.monotonic() + timeout
        while any(s.in_flight > 0 for s in states):
            remaining = deadline - self._clock.monotonic()
            if remaining <= 0:
                return
            self._gauges.beat()  # waiting on handlers is not a hang
            self._collect(self._drain(timeout=min(remaining, 0.1)))

    # -- pausing -----------------------------------------------------------------------------

    def _hold_for_commits(self, held: set[Partition]) -> None:
        """Hold back (or release) the partitions whose commits go unacknowledged."""
        before = self._pausing.commit_held
        if held - before:
            self.stats.commit_holds += 1
            self._metrics.commit_holds.labels(self.spec.name).inc()
            log.warning(
                "commits have not been acknowledged by the group coordinator; these "
                "partitions take no new work until they are (work finished now could not "
                "be committed, and would run again if the partitions were lost)",
                handler=self.spec.name,
                partitions=_names(sorted(held - before)),
                unacknowledged_for_seconds=COMMIT_HOLD_AFTER,
            )
        released = (before - held) & self._partitions.keys()
        if released:
            log.info(
                "commits acknowledged again; these partitions take work again",
                handler=self.spec.name,
                partitions=_names(sorted(released)),
            )
        self._pausing.commit_held = held
        self._changed = True

    def _apply_pauses(self) -> None:
        pause, resume = self._pausing.update(
            self._partitions.values(), self._executor.recent_handler_seconds
        )
        backpressure = self._pausing.backpressure
        if backpressure.withheld != self.stats.withheld:
            self.stats.withheld = backpressure.withheld
            log.debug(
                "backpressure: withholding records instead of pausing (the handler is fast "
                "enough to catch up)",
                handler=self.spec.name,
                pending=self._in_flight,
                max_pending=backpressure.max_pending,
            )
        if pause:
            self._source.pause([s.topic_partition for s in pause])
            self.stats.pauses += 1
            by_reason: dict[str, list[PartitionState]] = {}
            for state in pause:
                by_reason.setdefault(self._pausing.reasons[state], []).append(state)
            for reason, states in by_reason.items():
                log.debug(
                    "paused",
                    handler=self.spec.name,
                    reason=reason,
                    partitions=_names(states),
                    pending={str(s.topic_partition): len(s.offsets) for s in states},
                    max_pending=backpressure.max_pending,
                    max_pending_per_partition=backpressure.max_pending_per_partition,
                )
        if resume:
            self._source.resume([s.topic_partition for s in resume])
            log.debug(
                "resumed",
                handler=self.spec.name,
                partitions=_names(resume),
                pending={str(s.topic_partition): len(s.offsets) for s in resume},
            )

    # -- rebalances: the AssignmentListener, called on this thread inside fetch() ----------

    def on_assign(
        self, partitions: list[Partition], committed: Mapping[Partition, OffsetAndMetadata]
    ) -> None:
        self._rebalanced_at = self._clock.monotonic()
        self._generation += 1
        now = self._clock.time()
        held = self.held_at_assignment
        inherited: dict[str, int] = {}
        for partition in partitions:
            # What an earlier owner finished above the committed position: skipped at intake.
            start = committed.get(partition)
            finished = offset_map.decode(start.metadata, start.offset) if start else []
            if finished:
                inherited[str(partition)] = len(finished)
            state = PartitionState(
                *partition, generation=self._generation, now=now, inherited=finished
            )
            self._partitions[partition] = state
            self._leased[state.lease] = state
            if held is not None and held(partition):
                # Paused before its first fetch (at the end of this turn), not a reconcile
                # later: a fleet pause that names it (or its topic) holds it from the start.
                self._pausing.operator_held.add(partition)
                self._changed = True
        # The records of a fresh assignment can come in the fetch that delivered it.
        self._fair.update(len(self._partitions), self._executor.recent_handler_seconds)
        self.stats.assigned += 1
        self._metrics.rebalances.labels(self.spec.name, "assigned").inc()
        self.on_joined()  # librdkafka's classic protocol calls this with no partitions too
        log.info(
            "partitions assigned",
            handler=self.spec.name,
            partitions=_names(partitions),
            **({"finished_above_committed": inherited} if inherited else {}),
        )

    def on_joined(self) -> None:
        if not self._stopping.is_set():
            self._gauges.ready(True)

    def on_revoke(self, partitions: list[Partition]) -> None:
        self._rebalanced_at = self._clock.monotonic()
        self.stats.revoked += 1
        self._metrics.rebalances.labels(self.spec.name, "revoked").inc()
        self._let_go(partitions, commit=True)

    def on_lost(self, partitions: list[Partition]) -> None:
        # Another member may own these already: committing now could move its offsets back.
        self.stats.lost += 1
        self._metrics.rebalances.labels(self.spec.name, "lost").inc()
        self._let_go(partitions, commit=False)

    def lease_of(self, partition: Partition) -> Lease | None:
        """The partition's lease now (None when it is not assigned here)."""
        state = self._partitions.get(partition)
        return state.lease if state is not None else None

    def _rewind(self, partitions: list[Partition]) -> None:
        """A transaction was aborted (exactly_once): its writes are gone, and the offsets it
        would have committed are not. The partitions start over from their committed
        positions, as if assigned again: their work stops (what runs is waited for, bounded
        by revoke_timeout, so that a key never runs twice at once), their state and lease are
        new (so that late reports and held writes of the old one are ignored), and the
        consumer fetches them again from there (librdkafka INTRODUCTION.md: "rewind the
        consumer to the last committed offsets")."""
        states = [s for p in partitions if (s := self._partitions.get(p))]
        if not states:
            return
        self._stop_work(states)
        self._wait_in_flight(states, self.settings.revoke_timeout)
        if any(s.in_flight for s in states):
            self._executor.cancel([s.lease for s in states])
        self._forget(states)
        self._committer.discard(s.topic_partition for s in states)
        gone = [s.topic_partition for s in states]
        source: TransactionalSource = self._source  # type: ignore[assignment]
        # Where they start over. When the coordinator cannot tell, or the consumer cannot seek,
        # the poll thread stops (its process exits non-zero and is restarted): carrying on from
        # the fetch position would commit past the aborted messages, i.e. lose them.
        positions = source.committed_positions(gone, self.settings.revoke_timeout)
        missing = [str(p) for p in gone if p not in positions]
        if missing:
            raise KafkaWorkerError(
                f"handler {self.spec.name!r} cannot rewind {', '.join(missing)} after an "
                "aborted transaction: the group has no committed offset for them"
            )
        self._generation += 1
        now = self._clock.time()
        for partition in gone:
            state = PartitionState(*partition, generation=self._generation, now=now)
            self._partitions[partition] = state
            self._leased[state.lease] = state
        source.seek(positions)
        self._changed = True
        log.info(
            "partitions rewound to their committed positions after an aborted transaction",
            handler=self.spec.name,
            positions={str(p): offset for p, offset in positions.items()},
        )

    def _forget(self, states: list[PartitionState]) -> None:
        """Drop the poll side's state of partitions whose work was stopped."""
        paused = [s.topic_partition for s in states if s.paused]
        if paused:
            # librdkafka keeps a partition's pause flag across unassign and reassign.
            self._source.resume(paused)
        for state in states:
            del self._partitions[state.topic_partition]
            del self._leased[state.lease]
            self._gauges.forget(state)
            self._in_flight -= state.in_flight  # their reports will be ignored from now on
        self._backpressure.forget(states)
        # An operator's hold ends with the assignment: the next owner does not know of it.
        self._pausing.operator_held.difference_update(s.topic_partition for s in states)
        # A hold for commits too: the committer forgets their commits (discard()).
        self._pausing.commit_held = self._pausing.commit_held - {s.topic_partition for s in states}

    def _let_go(self, partitions: list[Partition], *, commit: bool) -> None:
        """Stop dispatching, drop unstarted, wait (bounded) for in-flight, commit, forget."""
        states = [s for p in partitions if (s := self._partitions.get(p))]
        self._stop_work(states)
        if commit and not self._closed_out:
            # During shutdown a revoke may not outlast what is left of shutdown_timeout.
            remaining = self._shutdown_deadline - self._clock.monotonic()
            self._wait_in_flight(states, min(self.settings.revoke_timeout, max(0.0, remaining)))
            self._commit_now(states)
        if any(s.in_flight for s in states):
            self._executor.cancel([s.lease for s in states])
        self._committer.discard(s.topic_partition for s in states)
        still = {str(s.topic_partition): s.in_flight for s in states if s.in_flight}
        if still and not self._closed_out:
            log.warning(
                f"{'revoked' if commit else 'lost'} partitions still had messages in flight; "
                "the new owner will process them again",
                handler=self.spec.name,
                in_flight=still,
            )
        self._forget(states)
        log.info(
            "partitions revoked" if commit else "partitions lost",
            handler=self.spec.name,
            partitions=_names(partitions),
        )

    def _stop_work(self, states: list[PartitionState]) -> None:
        for state in states:
            self._delayed.drop(state)  # never started: redelivered to the next owner
        self._fair.drop(states)  # the same
        self._give_up_unstarted([s.lease for s in states])

    # -- shutdown (the skeleton is PollLoop's) --------------------------------------------------

    def _leases(self) -> list[Lease]:
        return [s.lease for s in self._partitions.values()]

    def _outstanding(self) -> int:
        return sum(s.in_flight for s in self._partitions.values())

    def _stop_taking(self) -> None:
        states = list(self._partitions.values())
        if states:
            self._source.pause([s.topic_partition for s in states])
        self._stop_work(states)

    def _serve(self) -> None:
        # Keep serving the group (heartbeats are librdkafka's, but rebalance callbacks and
        # max.poll.interval.ms are ours) while in-flight handlers finish. A record from a
        # partition assigned meanwhile is not dispatched, so never committed.
        for record in self._source.fetch(0, 1):
            if (error := record.error()) is not None:
                self._intake.on_error(error)

    def _left_running(self) -> dict[str, int]:
        unfinished = [s for s in self._partitions.values() if s.in_flight]
        if unfinished:
            log.warning(
                "shutdown_timeout reached with messages in flight; they are not committed "
                "and will be delivered again",
                handler=self.spec.name,
                in_flight={str(s.topic_partition): s.in_flight for s in unfinished},
                lowest_unfinished={
                    str(s.topic_partition): s.offsets.lowest_unfinished() for s in unfinished
                },
            )
        return {str(s.topic_partition): s.in_flight for s in unfinished}

    def _make_durable(self, deadline: float) -> None:
        self._commit_now(self._partitions.values())
        self._closed_out = True

    def _close(self) -> None:
        try:
            self._source.close()
        finally:
            self._committer.close()


def _names(partitions: Iterable[PartitionState | Partition]) -> list[str]:
    return [str(p.topic_partition if isinstance(p, PartitionState) else p) for p in partitions]


# -- commits ---------------------------------------------------------------------------------


class Committer(Protocol):
    """The poll loop's view of commits."""

    def stage(self, partition: Partition, offsets: PartitionOffsets) -> None:
        """The partition's finished offsets changed: its position (every offset below it is
        finished), or what is finished above it."""
        ...

    def tick(self) -> list[Partition]:
        """Called every turn of the poll thread; the partitions to rewind to their committed
        positions (their uncommitted work was given up: an aborted transaction)."""
        ...

    def commit_now(self, partitions: Mapping[Partition, PartitionOffsets]) -> None:
        """Make what is finished in these durable before returning (revoke, shutdown)."""
        ...

    def discard(self, partitions: Iterable[Partition]) -> None:
        """Forget what is staged for these (the partitions are gone)."""
        ...

    def unacknowledged(self, longer_than: float) -> set[Partition]:
        """Partitions whose latest commit has gone unacknowledged (unanswered, or refused
        and not yet sent again successfully) for at least `longer_than` seconds."""
        ...

    def close(self) -> None:
        """The poll thread is done (after the source closed)."""
        ...


class OffsetCommit:
    """Commits each staged partition's position with its offset map, asynchronously, at most
    once per `interval`: the first change after a quiet interval at once, later ones
    together when the interval is over. The maps are built then, per commit, never per
    message. A commit the source says failed is sent again, with what is finished then, at
    the next interval.

    `max_metadata`: the broker's `offset.metadata.max.bytes`; a map longer than that is left
    out (the plain position is committed and counted). A broker with a lower limit refuses
    the commit (OFFSET_METADATA_TOO_LARGE): the limit is lowered below the refused map's
    length and the partition committed again. 0: no maps."""

    def __init__(
        self,
        source: Source,
        *,
        handler: str,
        interval: float = 1.0,
        max_metadata: int = offset_map.DEFAULT_MAX_CHARS,
        clock: Clock = SYSTEM_CLOCK,
        metrics: Metrics | None = None,
    ) -> None:
        self._source = source
        self._handler = handler
        self._interval = interval
        self.max_metadata = max_metadata
        self._clock = clock
        metrics = metrics or Metrics()
        self._fallbacks = metrics.offset_map_fallbacks.labels(handler)
        self._commits = metrics.commits.labels(handler)
        self._changed: dict[Partition, PartitionOffsets] = {}  # since the last commit
        # Every partition staged since its assignment: a failed commit is sent again from it.
        self._tracked: dict[Partition, PartitionOffsets] = {}
        self._sent: dict[Partition, OffsetAndMetadata] = {}  # the latest commit of each
        # Since when (monotonic) each partition has had a commit out that the coordinator
        # has not acknowledged: set by the first commit sent after an acknowledgement, kept
        # through refusals and their re-sends, cleared by the acknowledgement of the latest.
        self._unacknowledged: dict[Partition, float] = {}
        self._overflowing: set[Partition] = set()  # maps that did not fit, for the log
        self._due = float("-inf")  # no asynchronous commit before this (monotonic)
        self.commits = 0  # synchronous commits (revoke, shutdown)
        self.async_commits = 0

    def stage(self, partition: Partition, offsets: PartitionOffsets) -> None:
        self._changed[partition] = offsets
        self._tracked[partition] = offsets

    def tick(self) -> list[Partition]:
        """Called every turn of the poll thread: commit what changed once the interval is
        over. Nothing to rewind, ever: an at-least-once commit gives up no work."""
        failed = self._source.failed_commits()
        if failed:
            self._failed(failed)
        if not self._changed:
            return []
        now = self._clock.monotonic()
        if now < self._due:
            return []
        changed, self._changed = self._changed, {}
        offsets = self._offsets(changed, unchanged=False)
        if not offsets:
            return []
        self._due = now + self._interval
        try:
            self._source.commit(offsets, asynchronous=True)
        except KafkaException as exc:  # e.g. a partition unassigned meanwhile
            commit_log.warning("commit failed", handler=self._handler, error=str(exc))
            for partition in offsets:
                self._sent.pop(partition, None)
            return []
        self.async_commits += 1
        self._commits.inc()
        unacknowledged = self._unacknowledged
        for partition in offsets:
            unacknowledged.setdefault(partition, now)
        return []

    def unacknowledged(self, longer_than: float) -> set[Partition]:
        acknowledged = self._source.acknowledged_commits()
        if acknowledged:
            self._acknowledged(acknowledged)
        if not self._unacknowledged:
            return set()
        since = self._clock.monotonic() - longer_than
        return {p for p, sent in self._unacknowledged.items() if sent <= since}

    def _acknowledged(self, acknowledged: list[tuple[Partition, int]]) -> None:
        unacknowledged = self._unacknowledged
        for partition, offset in acknowledged:
            if partition not in unacknowledged:
                continue
            sent = self._sent.get(partition)
            if sent is None or sent.offset <= offset:
                del unacknowledged[partition]
            else:
                # An earlier commit answered while a later one is out: the coordinator
                # answers, so the later one's wait counts from now.
                unacknowledged[partition] = self._clock.monotonic()

    def commit_now(self, partitions: Mapping[Partition, PartitionOffsets]) -> None:
        """Commit synchronously (revoke, shutdown)."""
        self.discard(partitions)
        offsets = self._offsets(partitions, unchanged=True)
        if not offsets:
            return
        try:
            try:
                self._source.commit(offsets)
            except KafkaException as exc:
                if _code(exc) != KafkaError.OFFSET_METADATA_TOO_LARGE:
                    raise
                # Now is no time to find the broker's limit: the plain positions.
                self._refused(max(len(o.metadata) for o in offsets.values()))
                self._fallbacks.inc(sum(1 for o in offsets.values() if o.metadata))
                self._source.commit({p: OffsetAndMetadata(o.offset) for p, o in offsets.items()})
            self.commits += 1
            self._commits.inc()
            commit_log.debug(
                "committed",
                handler=self._handler,
                positions={str(p): o.offset for p, o in offsets.items()},
            )
        except KafkaException as exc:
            # Not a delivery problem: uncommitted work is delivered again, never skipped.
            commit_log.warning("commit failed", handler=self._handler, error=str(exc))

    def discard(self, partitions: Iterable[Partition]) -> None:
        """Forget what is staged for these (the partitions are gone, or committed now)."""
        for partition in partitions:
            self._changed.pop(partition, None)
            self._tracked.pop(partition, None)
            self._sent.pop(partition, None)
            self._unacknowledged.pop(partition, None)
            self._overflowing.discard(partition)

    def close(self) -> None:
        """Nothing of its own to close: the source's client is closed before."""

    def _offsets(
        self, partitions: Mapping[Partition, PartitionOffsets], *, unchanged: bool
    ) -> dict[Partition, OffsetAndMetadata]:
        """Each partition's position and offset map; `unchanged`: also those equal to the
        latest commit sent."""
        offsets: dict[Partition, OffsetAndMetadata] = {}
        sent = self._sent
        for partition, tracker in partitions.items():
            position = tracker.position()
            if position is None:
                continue  # nothing fetched yet: its committed position stands
            metadata = ""
            if self.max_metadata:
                finished = tracker.finished_above()
                encoded = offset_map.encode(position, finished, self.max_metadata)
                if encoded is None:
                    self._overflow(partition, position, len(finished))
                else:
                    metadata = encoded
                    self._overflowing.discard(partition)
            commit = OffsetAndMetadata(position, metadata)
            if unchanged or sent.get(partition) != commit:
                offsets[partition] = sent[partition] = commit
        return offsets

    def _overflow(self, partition: Partition, position: int, finished: int) -> None:
        self._fallbacks.inc()
        if partition in self._overflowing:
            return
        self._overflowing.add(partition)
        commit_log.warning(
            "the offset map does not fit the commit's metadata: committing the plain "
            "position, so a crash now would run the finished offsets above it again",
            handler=self._handler,
            partition=str(partition),
            position=position,
            finished_above=finished,
            offset_metadata_max_bytes=self.max_metadata,
        )

    def _failed(self, failed: list[tuple[Partition, int]]) -> None:
        for partition, code in failed:
            tracker = self._tracked.get(partition)
            sent = self._sent.pop(partition, None)
            if tracker is None:
                continue  # let go meanwhile
            if code == KafkaError.OFFSET_METADATA_TOO_LARGE and sent is not None:
                self._refused(len(sent.metadata))
            if code in REBALANCING and partition in self._unacknowledged:
                # Refused for a rebalance: the coordinator answers; the re-send's wait counts
                # from now. (One left unanswered while the group rebalances: REBALANCE_GRACE.)
                self._unacknowledged[partition] = self._clock.monotonic()
            self._changed[partition] = tracker

    def _refused(self, length: int) -> None:
        """The broker refused metadata this long: its offset.metadata.max.bytes is lower
        than the setting says. Halved rather than cut by one: a few refusals find a limit
        that fits, at the cost of maps shorter than the broker would take."""
        limit = length // 2
        if limit < self.max_metadata:
            commit_log.warning(
                "the broker refused an offset map as too large (OFFSET_METADATA_TOO_LARGE): "
                "its offset.metadata.max.bytes is lower than offset_metadata_max_bytes; "
                "keeping maps shorter from now on",
                handler=self._handler,
                refused_length=length,
                offset_metadata_max_bytes=self.max_metadata,
            )
            self.max_metadata = limit


def _code(exc: KafkaException) -> int | None:
    error = exc.args[0] if exc.args else None
    return error.code() if isinstance(error, KafkaError) else None

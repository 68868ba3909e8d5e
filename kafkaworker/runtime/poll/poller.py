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

Commits: the poll thread hands the committer the positions that moved (every offset below each
is finished). StoredOffsetCommit, the default, stores them once a turn with the source's
client, which commits what is stored every `commit_interval` on its own thread (librdkafka's
auto-commit over its offset store, with `enable.auto.offset.store=false` so that only these
positions are ever stored; a commit that fails is retried at the next interval with whatever
is stored then). Revoke and shutdown commit synchronously. Only positions that
PartitionOffsets reports are ever stored or committed, never what the client merely handed
out. Why not commit asynchronously from the poll thread: a failed commit (a rebalance in
progress, a coordinator moving) then needs its own retry bookkeeping, or the position of a
partition that receives nothing more stays uncommitted until the next revoke; a first version
did exactly that and a fault test caught it (a killed member's rebalance ate the last commit).
A producer transaction carrying the offsets is the other way the Committer seam is filled.
"""

from __future__ import annotations

import queue
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog
from confluent_kafka import KafkaException

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
from kafkaworker.runtime.poll.backpressure import Backpressure
from kafkaworker.runtime.poll.delayed import DelayedRetries
from kafkaworker.runtime.poll.gauges import PartitionRow, PollGauges
from kafkaworker.runtime.poll.partitions import Intake, PartitionState
from kafkaworker.runtime.poll.pausing import Pausing
from kafkaworker.runtime.source import (
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
# picked up promptly (commits, resuming paused partitions), so it waits less.
_IDLE_POLL = 0.2
_BUSY_POLL = 0.02


# How long a shutdown's drain waits for reports at a time, serving the group in between.
_DRAIN_SLICE = 0.05


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
            take = max(
                1, min(self.settings.poll_batch, self.settings.max_pending - self._in_flight)
            )
            records = self._source.fetch(_BUSY_POLL if busy else _IDLE_POLL, take)
            if records:
                self._dispatch(records)
            if self._delayed:
                self._submit(self._delayed.due())
            self._collect(self._drain())
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
        # Hand over what was counted in flight before raising, or shutdown would wait for it.
        self._submit(taken.runs)
        if taken.fatal is not None:
            raise KafkaException(taken.fatal)

    def _submit(self, runs: list[Run]) -> None:
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
            position = state.offsets.advance()
            if position is not None:
                self._committer.stage(state.topic_partition, position)

    def _commit_now(self, states: Iterable[PartitionState]) -> None:
        self._committer.commit_now(
            {
                s.topic_partition: s.offsets.committable
                for s in states
                if s.offsets.committable is not None
            }
        )

    def _wait_in_flight(self, states: list[PartitionState], timeout: float) -> None:
        deadline = self._clock.monotonic() + timeout
        while any(s.in_flight > 0 for s in states):
            remaining = deadline - self._clock.monotonic()
            if remaining <= 0:
                return
            self._gauges.beat()  # waiting on handlers is not a hang
            self._collect(self._drain(timeout=min(remaining, 0.1)))

    # -- pausing -----------------------------------------------------------------------------

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

    def on_assign(self, partitions: list[Partition]) -> None:
        self._generation += 1
        now = self._clock.time()
        held = self.held_at_assignment
        for partition in partitions:
            state = PartitionState(*partition, generation=self._generation, now=now)
            self._partitions[partition] = state
            self._leased[state.lease] = state
            if held is not None and held(partition):
                # Paused before its first fetch (at the end of this turn), not a reconcile
                # later: a fleet pause that names it (or its topic) holds it from the start.
                self._pausing.operator_held.add(partition)
                self._changed = True
        self.stats.assigned += 1
        self._metrics.rebalances.labels(self.spec.name, "assigned").inc()
        self.on_joined()  # librdkafka's classic protocol calls this with no partitions too
        log.info("partitions assigned", handler=self.spec.name, partitions=_names(partitions))

    def on_joined(self) -> None:
        if not self._stopping.is_set():
            self._gauges.ready(True)

    def on_revoke(self, partitions: list[Partition]) -> None:
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

    def stage(self, partition: Partition, position: int) -> None:
        """`position` is finished up to (every offset below it is finished)."""
        ...

    def tick(self) -> list[Partition]:
        """Called every turn of the poll thread; the partitions to rewind to their committed
        positions (their uncommitted work was given up: an aborted transaction)."""
        ...

    def commit_now(self, positions: Mapping[Partition, int]) -> None:
        """Make these durable before returning (revoke, shutdown)."""
        ...

    def discard(self, partitions: Iterable[Partition]) -> None:
        """Forget what is staged for these (the partitions are gone)."""
        ...

    def close(self) -> None:
        """The poll thread is done (after the source closed)."""
        ...


class StoredOffsetCommit:
    """Stores finished positions every turn; the client commits them periodically."""

    def __init__(self, source: Source, *, handler: str) -> None:
        self._source = source
        self._handler = handler
        self._pending: dict[Partition, int] = {}  # moved since the last store
        self.commits = 0  # synchronous commits (revoke, shutdown)

    def stage(self, partition: Partition, position: int) -> None:
        """`position` is finished up to (every offset below it is finished)."""
        self._pending[partition] = position

    def tick(self) -> list[Partition]:
        """Called every turn of the poll thread: store what moved."""
        if not self._pending:
            return []
        pending, self._pending = self._pending, {}
        try:
            self._source.store(pending)
        except KafkaException as exc:  # e.g. a partition unassigned meanwhile
            commit_log.warning("storing offsets failed", handler=self._handler, error=str(exc))
        return []

    def commit_now(self, positions: Mapping[Partition, int]) -> None:
        """Commit synchronously (revoke, shutdown)."""
        self.discard(positions)
        if not positions:
            return
        try:
            # Stored too: librdkafka commits what is stored when it lets partitions go (on
            # unassign and close), and an older stored position would then move the
            # committed one back (a fault test saw a drained worker's restart repeat work).
            self._source.store(positions)
            self._source.commit(positions)
            self.commits += 1
            commit_log.debug(
                "committed",
                handler=self._handler,
                positions={str(p): offset for p, offset in positions.items()},
            )
        except KafkaException as exc:
            # Not a delivery problem: uncommitted work is delivered again, never skipped.
            commit_log.warning("commit failed", handler=self._handler, error=str(exc))

    def discard(self, partitions: Iterable[Partition]) -> None:
        """Forget positions not stored yet (the partitions are gone, or committed now)."""
        for partition in partitions:
            self._pending.pop(partition, None)

    def close(self) -> None:
        """Nothing of its own to close: the source's client commits."""

"""The poll thread: the ONLY thread that touches the consumer. It never runs user code.

Each turn it fetches a batch, hands it to the pool, takes back what the pool finished, stores
the offsets that became committable (librdkafka's auto-commit then commits them), and pauses
or resumes partitions for backpressure. It keeps polling while partitions are paused, so a slow
handler never costs the group membership (`max.poll.interval.ms`).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from kafkaworker.handlers import HandlerSpec
from kafkaworker.message import Message
from kafkaworker.observability.metrics import Metrics
from kafkaworker.runtime.breaker import CircuitBreaker
from kafkaworker.runtime.deadletter import ATTEMPTS_HEADER
from kafkaworker.runtime.lanes import Run
from kafkaworker.runtime.partitions import PartitionState
from kafkaworker.runtime.pool import (
    DEAD_LETTERED,
    NOT_FINISHED,
    Completion,
    CompletionQueue,
    WorkerPool,
)
from kafkaworker.runtime.retrytopics import DUE_HEADER, RetryRoutes
from kafkaworker.serialization import Codec
from kafkaworker.settings import Settings

log = structlog.get_logger("kafkaworker.poller")

# How long one poll waits when there is no work out. With work out, completions must be
# picked up promptly (commits, resuming paused partitions), so it waits less.
_IDLE_POLL = 0.2
_BUSY_POLL = 0.02
# How often the gauges (lag, in flight, heartbeat...) are refreshed.
_OBSERVE_EVERY = 1.0
# Over a backpressure limit the poll thread first withholds (takes no records; they wait in
# librdkafka's queue, which stops fetching when full) for at most this long, and pauses
# partitions only if that did not bring them back under: a pause drops the partition's
# prefetched records (librdkafka#5343), which a fast handler then waits for again. A fast
# handler drains to the low mark in 5-25 ms here; a slow one is paused after this stall.
_WITHHOLD = 0.1
# A partition that needed pausing is paused at once for this long: withholding stops every
# partition, and a slow one must not stall the others each time it refills.
_PAUSE_AT_ONCE_FOR = 30.0
# Handlers slower than this per message are paused at once: a refetch costs them little, and
# pausing the partitions over their share is what lets the others' records through.
_WITHHOLD_BELOW = 0.001


@dataclass
class PollerStats:
    """Counters written by the poll thread; read by tests and metrics."""

    fetched: int = 0
    finished: int = 0
    assigned: int = 0
    revoked: int = 0
    lost: int = 0
    pauses: int = 0
    withheld: int = 0  # times the poll thread stopped taking records for a limit
    commits: int = 0


class Poller:
    """Drives one consumer for one handler; owns the consumer and its stop path."""

    def __init__(
        self,
        spec: HandlerSpec,
        settings: Settings,
        consumer: Consumer,
        pool: WorkerPool,
        completions: CompletionQueue,
        *,
        breaker: CircuitBreaker | None = None,
        metrics: Metrics | None = None,
        routes: RetryRoutes | None = None,
        runtime_codecs: Mapping[str, Codec] | None = None,
    ) -> None:
        self.spec = spec
        self.settings = settings
        self._consumer = consumer
        self._pool = pool
        self._completions = completions
        self._breaker = breaker
        self._metrics = metrics or Metrics()
        self._routes = routes
        self._retry_topics = routes.retry_topics if routes else frozenset()
        self._holding: set[PartitionState] = set()  # partitions with delayed records
        self._codec = spec.message_codec(runtime_codecs)
        self._partitions: dict[tuple[str, int], PartitionState] = {}
        self._stopping = threading.Event()
        # Set once shutdown committed: the revoke that consumer.close() triggers then only
        # forgets (waiting and committing again would delay leaving the group).
        self._closed_out = False
        self._shutdown_deadline = float("inf")
        self._globally_paused = False
        # Since when the poll thread withholds (takes no records) for a limit; None: it takes.
        self._withholding_since: float | None = None
        # Messages handed to the pool and not yet reported, over all partitions; and whether
        # anything changed this turn (backpressure is only re-judged then).
        self._in_flight = 0
        self._changed = False
        self.stats = PollerStats()
        self.unfinished_at_exit: dict[tuple[str, int], int] = {}
        name = spec.name
        self._consumed = self._metrics.consumed.labels(name)
        self._finished = self._metrics.finished.labels(name)
        self._next_observe = 0.0
        self._ready = self._metrics.ready.labels(name)
        self._heartbeat = self._metrics.heartbeat.labels(name)
        self._ready.set(0)
        self._heartbeat.set(time.time())
        # consumer_lag series this poller created: only these are zeroed or removed on revoke.
        self._lag_series: set[tuple[str, str, str]] = set()

    # -- lifecycle (called from the TopicWorker) ---------------------------------------------

    def request_stop(self) -> None:
        self._stopping.set()

    def run(self) -> None:
        """The poll thread's body: subscribe, poll until asked to stop, then shut down."""
        self._consumer.subscribe(
            [*self.spec.topics, *(stage.topic for stage in self._routes.stages)]
            if self._routes
            else list(self.spec.topics),
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        try:
            while not self._stopping.is_set():
                self._turn()
        finally:
            self._shutdown()

    # -- one turn ---------------------------------------------------------------------------

    def _turn(self) -> None:
        if self._withholding_since is not None:
            # Over a limit: take no records for now; finish what is out.
            self._collect(self._drain(timeout=_BUSY_POLL))
        else:
            busy = (
                self._in_flight > 0
                or self._globally_paused
                or bool(self._holding)
                or (self._breaker is not None and self._breaker.open)
            )
            first = self._consumer.poll(_BUSY_POLL if busy else _IDLE_POLL)
            if first is not None:
                # poll() returns as soon as one record is there; consume(n, 0) then takes what
                # is already fetched without waiting (consume(n, t) would wait t for a full
                # batch). `first` is dispatched before consume() runs: consume() may run
                # rebalance callbacks, and a record from before a revoke must not reach the
                # next assignment.
                self._dispatch([first])
                # No more than the handler's budget has room for: a large batch must not
                # overshoot a small max_pending.
                take = min(self.settings.poll_batch, self.settings.max_pending - self._in_flight)
                if take > 1:
                    self._dispatch(self._consumer.consume(take - 1, 0))
            if self._holding:
                self._release_due()
            self._collect(self._drain())
        if self._changed or self._breaker is not None or self._withholding_since is not None:
            self._changed = False
            self._apply_backpressure()
        now = time.monotonic()
        if now >= self._next_observe:
            self._next_observe = now + _OBSERVE_EVERY
            self._observe()

    def _observe(self) -> None:
        """Refresh the gauges: a second's staleness costs nothing, a per-message update would."""
        metrics, name = self._metrics, self.spec.name
        self._heartbeat.set(time.time())
        metrics.in_flight.labels(name).set(self._in_flight)
        metrics.assigned_partitions.labels(name).set(len(self._partitions))
        metrics.paused_partitions.labels(name).set(
            sum(1 for s in self._partitions.values() if s.paused)
        )
        for state in self._partitions.values():
            tp = TopicPartition(state.topic, state.partition)
            try:
                # Cached: the log end offset of the latest fetch response, no request.
                _, end = self._consumer.get_watermark_offsets(tp, cached=True)
                position = state.offsets.lowest_unfinished()
                if position is None:
                    position = state.offsets.committable
                if position is None:  # nothing fetched in this assignment yet
                    position = self._consumer.position([tp])[0].offset
            except KafkaException:
                continue
            if end >= 0 and position >= 0:
                series = (name, state.topic, str(state.partition))
                metrics.consumer_lag.labels(*series).set(end - position)
                self._lag_series.add(series)

    def _dispatch(self, batch: list[Any]) -> None:
        # Records come in runs of one partition: the per-partition work (state lookup, offset
        # tracking, counting) is done once per run, only the Message once per record.
        runs: list[Run] = []
        partitions = self._partitions
        fatal: KafkaError | None = None
        current: tuple[str, int] | None = None
        state: PartitionState | None = None
        records: list[Any] = []
        offsets: list[int] = []
        last = -1
        for raw in batch:
            error = raw.error()
            if error is not None:
                fatal = fatal or self._on_error(error)
                continue
            topic, partition, offset = raw.topic(), raw.partition(), raw.offset()
            if current is None or partition != current[1] or topic != current[0]:
                if records:
                    self._add_run(runs, state, records, offsets)  # type: ignore[arg-type]
                    records, offsets = [], []
                current = (topic, partition)
                state = partitions.get(current)
                if state is not None and state.revoked:
                    state = None
                last = state.last_dispatched if state is not None else -1
            if state is None:
                continue  # fetched just before a revoke: the new owner gets it
            if offset <= last:
                # The tracker needs ascending offsets; the first copy is already in flight.
                log.warning(
                    "record fetched twice; the first copy is handled",
                    handler=self.spec.name,
                    topic=topic,
                    partition=partition,
                    offset=offset,
                    last_dispatched=last,
                )
                continue
            last = offset
            records.append(raw)
            offsets.append(offset)
        if records:
            self._add_run(runs, state, records, offsets)  # type: ignore[arg-type]
        count = sum(len(run[1]) for run in runs)
        if count:
            self.stats.fetched += count
            self._consumed.inc(count)
            self._in_flight += count
            self._changed = True
        # Hand over what was counted in flight before raising, or shutdown would wait for it.
        self._pool.submit(runs)
        if fatal is not None:
            raise KafkaException(fatal)

    def _add_run(
        self, runs: list[Run], state: PartitionState, records: list[Any], offsets: list[int]
    ) -> None:
        state.last_dispatched = offsets[-1]
        state.offsets.add_run(offsets)
        messages = Message._from_run(
            records, offsets, self._codec, state, state.topic, state.partition
        )
        if state.topic in self._retry_topics:
            messages = [msg for msg in messages if not self._hold(msg, state)]
            if not messages:
                return
        state.in_flight += len(messages)
        runs.append((state, messages))

    def _hold(self, msg: Message[Any], state: PartitionState) -> bool:
        """A record from a retry topic: count its attempts; hold it if it is not due yet."""
        attempts = msg.header(ATTEMPTS_HEADER)
        if attempts is not None and attempts.isdigit():
            msg.attempt = int(attempts) + 1
        due = msg.header(DUE_HEADER)
        due_ms = int(due) if due is not None and due.isdigit() else 0
        if state.delayed or due_ms > time.time() * 1000:
            state.delayed.append(msg)  # behind earlier held ones: they are due first
            self._holding.add(state)
            self._changed = True  # the partition must be paused now
            return True
        return False

    def _release_due(self) -> None:
        """Dispatch held retry records whose due time has come, in order."""
        now_ms = time.time() * 1000
        runs: list[Run] = []
        for state in list(self._holding):
            delayed = state.delayed
            ready: list[Message[Any]] = []
            while delayed:
                due = delayed[0].header(DUE_HEADER)
                if due is not None and due.isdigit() and int(due) > now_ms:
                    break
                ready.append(delayed.popleft())
            if ready:
                state.in_flight += len(ready)
                self._in_flight += len(ready)
                runs.append((state, ready))
            if not delayed:
                self._holding.discard(state)
        if runs:
            self._changed = True  # and resumed once nothing is held
            self._pool.submit(runs)

    def _on_error(self, error: KafkaError) -> KafkaError | None:
        """Log a consumer error; return it when it is fatal (the consumer is unusable)."""
        if error.code() == KafkaError._PARTITION_EOF:
            return None
        if error.fatal():
            return error
        log.warning("consumer error", handler=self.spec.name, error=str(error))
        return None

    # -- completions and commits -------------------------------------------------------------

    def _drain(self, timeout: float | None = None) -> list[Completion]:
        """Everything the pool reported so far; with a timeout, wait that long for the first."""
        done: list[Completion] = []
        try:
            if timeout is not None:
                done.extend(self._completions.get(timeout=timeout))
            while True:
                done.extend(self._completions.get_nowait())
        except queue.Empty:
            pass
        return done

    def _collect(self, completions: Iterable[Completion]) -> None:
        """Mark finished offsets and store those that became committable."""
        touched: set[PartitionState] = set()
        finished = returned = 0
        breaker = self._breaker
        for state, offsets, outcome in completions:
            if state.forgotten:
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
        self.stats.finished += finished
        if finished:
            self._finished.inc(finished)
        self._in_flight -= returned
        self._changed = self._changed or returned > 0
        to_store = []
        for state in touched:
            position = state.offsets.advance()
            if position is not None:
                to_store.append(TopicPartition(state.topic, state.partition, position))
        if to_store:
            try:
                self._consumer.store_offsets(offsets=to_store)
            except KafkaException as exc:  # e.g. a partition unassigned meanwhile
                log.warning("store_offsets failed", handler=self.spec.name, error=str(exc))

    def _commit(self, states: Iterable[PartitionState]) -> None:
        """Synchronously commit the committable position of these partitions."""
        offsets = [
            TopicPartition(s.topic, s.partition, s.offsets.committable)
            for s in states
            if s.offsets.committable is not None
        ]
        if not offsets:
            return
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
            self.stats.commits += 1
        except KafkaException as exc:
            # Not fatal for delivery: uncommitted work is redelivered, never skipped.
            log.warning("commit failed", handler=self.spec.name, error=str(exc))

    def _wait_in_flight(self, states: list[PartitionState], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while any(s.in_flight > 0 for s in states):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._heartbeat.set(time.time())  # waiting on handlers is not a hang
            self._collect(self._drain(timeout=min(remaining, 0.1)))

    # -- backpressure ------------------------------------------------------------------------

    def _apply_backpressure(self) -> None:
        settings = self.settings
        high, low = settings.max_pending_per_partition, settings.max_pending_per_partition // 2
        total = 0
        for state in self._partitions.values():
            outstanding = len(state.offsets)
            total += outstanding
            if outstanding >= high:
                state.over_limit = True
            elif outstanding <= low:
                state.over_limit = False
        if total >= settings.max_pending:
            self._globally_paused = True
        elif total <= settings.max_pending // 2:
            self._globally_paused = False
        # Over the handler's limit, only partitions holding at least their fair share pause:
        # the budget is filled in fetch order, and pausing every partition would starve those
        # fetched last while the first ones drain. The total stays under 2 x max_pending (the
        # others may each still grow to their share).
        fair = settings.max_pending // max(1, len(self._partitions))
        over_budget = self._globally_paused
        limited = {
            state
            for state in self._partitions.values()
            if (over_budget and len(state.offsets) >= fair) or state.over_limit
        }
        withhold = self._withhold([s for s in limited if not s.paused])
        breaker_open = self._update_breaker()
        pause: list[TopicPartition] = []
        resume: list[TopicPartition] = []
        for state in self._partitions.values():
            # A retry partition whose head is not due is paused until it is.
            want = (
                (state in limited and (state.paused or not withhold))
                or breaker_open
                or bool(state.delayed)
            )
            if want != state.paused and not state.revoked:
                state.paused = want
                (pause if want else resume).append(TopicPartition(state.topic, state.partition))
        if pause:
            self._consumer.pause(pause)
            self.stats.pauses += 1
            log.debug("paused", handler=self.spec.name, partitions=_names(pause))
        if resume:
            self._consumer.resume(resume)
            log.debug("resumed", handler=self.spec.name, partitions=_names(resume))

    def _withhold(self, limited: list[PartitionState]) -> bool:
        """Whether to withhold records (rather than pause) for these partitions over a limit."""
        now = time.monotonic()
        if (
            not limited
            or self._pool.recent_handler_seconds >= _WITHHOLD_BELOW
            or any(state.pause_at_once_until > now for state in limited)
        ):
            self._withholding_since = None
            return False
        if self._withholding_since is None:
            self._withholding_since = now
            self.stats.withheld += 1
            return True
        if now - self._withholding_since < _WITHHOLD:
            return True
        for state in limited:
            state.pause_at_once_until = now + _PAUSE_AT_ONCE_FOR
        self._withholding_since = None
        return False

    def _update_breaker(self) -> bool:
        breaker = self._breaker
        if breaker is None:
            return False
        share = breaker.share
        transition = breaker.update()
        if transition == "opened":
            self._metrics.circuit_open.labels(self.spec.name).set(1)
            log.error(
                "circuit breaker opened: most messages are going to the dead-letter topic; "
                "pausing the handler instead",
                handler=self.spec.name,
                dead_lettered_share=round(share, 2),
                cooldown=breaker.cooldown,
            )
        elif transition == "closed":
            self._metrics.circuit_open.labels(self.spec.name).set(0)
            log.warning("circuit breaker closed: resuming", handler=self.spec.name)
        return breaker.open

    # -- rebalances (called by librdkafka from inside poll(), on this thread) ----------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._partitions[(tp.topic, tp.partition)] = PartitionState(tp.topic, tp.partition)
        self.stats.assigned += 1
        self._metrics.rebalances.labels(self.spec.name, "assigned").inc()
        if not self._stopping.is_set():
            self._ready.set(1)  # a member of the group now (librdkafka calls this when empty too)
        log.info("partitions assigned", handler=self.spec.name, partitions=_names(partitions))

    def on_statistics(self, statistics: str) -> None:
        """KIP-848 (group.protocol=consumer) calls no assign callback for a member given no
        partitions, so readiness there is librdkafka's group state: "up" once the coordinator
        is found and the member heartbeats. Runs inside poll(), on the poll thread."""
        if self._stopping.is_set():
            return
        group = orjson.loads(statistics).get("cgrp") or {}
        if group.get("state") == "up":
            self._ready.set(1)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.stats.revoked += 1
        self._metrics.rebalances.labels(self.spec.name, "revoked").inc()
        self._release(partitions, commit=True)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Another member may own these already: committing now could move its offsets back.
        self.stats.lost += 1
        self._metrics.rebalances.labels(self.spec.name, "lost").inc()
        self._release(partitions, commit=False)

    def _release(self, partitions: list[TopicPartition], *, commit: bool) -> None:
        """Stop dispatching, drop unstarted, wait (bounded) for in-flight, commit, forget."""
        states = [s for tp in partitions if (s := self._partitions.get((tp.topic, tp.partition)))]
        self._stop_work(states)
        if commit and not self._closed_out:
            # During shutdown a revoke may not outlast what is left of shutdown_timeout.
            remaining = self._shutdown_deadline - time.monotonic()
            self._wait_in_flight(states, min(self.settings.revoke_timeout, max(0.0, remaining)))
            self._commit(states)
        still = {(s.topic, s.partition): s.in_flight for s in states if s.in_flight}
        if still and not self._closed_out:
            log.warning(
                "revoked partitions still had messages in flight; the new owner will process "
                "them again",
                handler=self.spec.name,
                in_flight=still,
            )
        paused = [TopicPartition(s.topic, s.partition) for s in states if s.paused]
        if paused:
            # librdkafka keeps a partition's pause flag across unassign and reassign.
            self._consumer.resume(paused)
        for state in states:
            del self._partitions[(state.topic, state.partition)]
            state.forgotten = True
            self._forget_lag(state)
            self._in_flight -= state.in_flight  # their reports will be ignored from now on
        log.info(
            "partitions revoked" if commit else "partitions lost",
            handler=self.spec.name,
            partitions=_names(partitions),
        )

    def _forget_lag(self, state: PartitionState) -> None:
        series = (self.spec.name, state.topic, str(state.partition))
        if series not in self._lag_series:
            return
        self._lag_series.discard(series)
        if self._metrics.multiprocess:
            # Per-process files cannot drop a series: a 0 adds nothing to the live sum.
            self._metrics.consumer_lag.labels(*series).set(0)
        else:
            self._metrics.consumer_lag.remove(*series)

    def _stop_work(self, states: list[PartitionState]) -> None:
        for state in states:
            state.revoke()
            state.delayed.clear()  # never started: redelivered to the next owner
            self._holding.discard(state)
        dropped = self._pool.drop(states)
        self._collect((m._state, [m.offset], NOT_FINISHED) for m in dropped)

    # -- shutdown ------------------------------------------------------------------------------

    def _shutdown(self) -> None:
        """Stop fetching, finish in-flight work within shutdown_timeout, commit, close."""
        self._ready.set(0)  # draining: not ready any more
        states = list(self._partitions.values())
        self._shutdown_deadline = deadline = time.monotonic() + self.settings.shutdown_timeout
        try:
            if states:
                self._consumer.pause([TopicPartition(s.topic, s.partition) for s in states])
            self._stop_work(states)
            while any(s.in_flight for s in self._partitions.values()):
                if time.monotonic() >= deadline:
                    break
                # Keep serving the group (heartbeats are librdkafka's, but rebalance callbacks
                # and max.poll.interval.ms are ours) while in-flight handlers finish. A record
                # from a partition assigned meanwhile is not dispatched, so never stored.
                self._heartbeat.set(time.time())
                record = self._consumer.poll(0)
                if record is not None and (error := record.error()) is not None:
                    self._on_error(error)
                self._collect(self._drain(timeout=0.05))
            self._collect(self._drain())
            self._commit(self._partitions.values())
            self._closed_out = True
            self.unfinished_at_exit = {
                (s.topic, s.partition): s.in_flight
                for s in self._partitions.values()
                if s.in_flight
            }
            if self.unfinished_at_exit:
                log.warning(
                    "shutdown_timeout reached with messages in flight; they are not committed "
                    "and will be delivered again",
                    handler=self.spec.name,
                    in_flight=self.unfinished_at_exit,
                    lowest_unfinished={
                        f"{s.topic}[{s.partition}]": s.offsets.lowest_unfinished()
                        for s in self._partitions.values()
                        if s.in_flight
                    },
                )
        finally:
            self._consumer.close()
            self._pool.close()


def _names(partitions: Iterable[TopicPartition]) -> list[str]:
    return [f"{tp.topic}[{tp.partition}]" for tp in partitions]

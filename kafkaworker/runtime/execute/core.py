"""ExecutorCore: what running a handler's messages is, whichever thread or loop runs them.

One object holds a handler's lanes, its failure path, the cadence of a chunk (when the clock
is read, when finished work is reported), batch filling and the steps of the failure path. It
runs a lane's chunk as a generator that never waits: wherever something must be waited for it
yields a step (steps.py), which a driver carries out, blocking on a worker thread (threads.py)
or awaiting on the event loop (loop.py). The drivers differ only in how they wait; httpx's one
BaseClient under Client and AsyncClient is the model. What wraps every handler call (a
transaction, a span) is added here, once.

Lanes keep order. A lane is a FIFO of messages. An exclusive lane is drained by one worker at
a time, which is what keeps order: one lane per partition (`partition`, Kafka's own guarantee)
or per key within a partition (`key`; null keys share one lane). With `none` there is a single
shared lane that every worker drains at once. The lanes are guarded by `lock`, which the
drivers hold around the `*_locked` methods (the thread driver's condition is built on it, so
one acquisition both queues work and wakes a worker).
"""

from __future__ import annotations

import functools
import math
import threading
from collections import deque
from collections.abc import Callable, Collection, Generator, Hashable, Iterable, Sequence
from operator import attrgetter
from typing import TYPE_CHECKING, Any, TypeAlias

import structlog

from kafkaworker.handlers import HandlerSpec, Ordering
from kafkaworker.observability.metrics import Metrics
from kafkaworker.runtime.clock import SYSTEM_CLOCK, Clock
from kafkaworker.runtime.execute.attempts import Attempts
from kafkaworker.runtime.execute.batches import BatchRunner
from kafkaworker.runtime.execute.outputs import Outputs
from kafkaworker.runtime.execute.steps import Acks, Emit, Idle, Sleep, Write
from kafkaworker.runtime.handoff import (
    Completion,
    CompletionQueue,
    Dispatched,
    Lease,
    Outcome,
    Run,
    not_finished,
)
from kafkaworker.runtime.source import Record

if TYPE_CHECKING:
    from kafkaworker.tracing.spans import Processing, ProcessSpans

log = structlog.get_logger("kafkaworker.pool")

LaneKey: TypeAlias = Hashable
# A message under the failure policy: its outcome and the seconds of its handler calls.
_Attempt: TypeAlias = Callable[
    [Dispatched, BaseException | None, Callable[[], None]],
    Generator[Any, Any, tuple[Outcome, float]],
]
_RECORD = attrgetter("record")  # a Message's confluent-kafka record
_KEY = Record.key

NOT_FINISHED, FINISHED = Outcome.NOT_FINISHED, Outcome.FINISHED
AWAITING_ACK = Outcome.AWAITING_ACK
# A chunk's finished work is reported at least this often, so that commits and backpressure
# follow slow handlers closely; after a call this slow, before every next message.
REPORT_EVERY = 0.05
SLOW_HANDLER = 0.001
# Calls between two clock readings once handlers are fast: a reading per message was a tenth
# of the per-message cost of a decode-only handler.
CLOCK_EVERY = 16
# Calls timed one by one, kept for the dashboard's p99 (the last minute's). The clock is read
# after every call only while handlers are slow (over SLOW_HANDLER): there a reading is free
# next to the call, while per-call readings of fast handlers were a tenth of their cost. A
# fast handler's p99 is then that of a sample (the first call of each chunk), below
# SLOW_HANDLER like the rest.
TIMED_CALLS = 4096
# An async handler's finished offsets are reported this long after the first of them, with
# whatever else finished meanwhile: each report wakes the poll thread, which then competes with
# the loop for the GIL. Reporting every loop iteration, 512 coroutines sleeping 2 ms each made
# the poll thread the busiest thread of the process (with uvloop's fast iterations).
REPORT_AFTER = 0.005
# Completion((lease, offsets, outcome)) without the Python frame of NamedTuple's __new__.
_completion = functools.partial(tuple.__new__, Completion)

# What a chunk's generator yields: steps, and an async handler's awaitables.
Work = Generator[Any, Any, None]


def _nothing() -> bool:
    return False


class ExecutorCore:
    """One handler's execution, shared by its driver's workers (threads or coroutines)."""

    def __init__(
        self,
        spec: HandlerSpec,
        attempts: Attempts,
        completions: CompletionQueue,
        *,
        metrics: Metrics | None = None,
        batches: BatchRunner | None = None,
        clock: Clock = SYSTEM_CLOCK,
        spans: ProcessSpans | None = None,
    ) -> None:
        self.spec = spec
        self.attempts = attempts
        self.clock = clock
        # With tracing on, every message runs in a process span (`_traced`), on the path of
        # the failure policy: the inline call of the plain path stays as it is, span-free.
        self._spans = spans
        self._completions = completions
        self._batches = batches
        self._manual = spec.ack == "manual"
        self._awaiting = spec.is_async
        metrics = metrics or Metrics()
        self._handler_seconds = metrics.handler_seconds.labels(spec.name)
        self.lock = threading.Lock()
        # Whether a message's outputs may be acknowledged after its lane moved on (`pending` in
        # _chunk): at least once, auto acks, single messages; the thread driver sets
        # defer_acks once it knows its outputs are produced (not held for a transaction).
        self.may_defer_acks = (
            spec.output is not None
            and not self._manual
            and spec.processing_guarantee == "at_least_once"
            and batches is None
            and not spec.is_async
        )
        self.defer_acks = False
        self._lanes = Lanes(spec.ordering, take_size=spec.batch.max_size if spec.batch else 1)
        self.closing = False
        # Mean handler time per message lately (whichever chunk reported last).
        self._recent_handler_seconds = 0.0
        # (when, seconds) of calls timed one by one; appended by the workers (deque.append
        # is atomic), copied whole by the reader.
        self._timed: deque[tuple[float, float]] = deque(maxlen=TIMED_CALLS)
        # An async handler's reports, gathered for REPORT_AFTER (the loop's, see
        # `flush_later`): completions, and runs of finished offsets that chunks still running
        # have not reported, by id(run), so that a chunk whose next call awaits for long does
        # not hold them back. Handler time not yet in the metric is added with them.
        self._gathered: list[Completion] = []
        self._unreported: dict[int, tuple[Lease, list[int]]] = {}
        self._flush_scheduled = False
        self._busy_seconds = 0.0
        self._busy_calls = 0
        # Set by the loop driver: runs flush_gathered() REPORT_AFTER from now, on the loop.
        self.flush_later: Callable[[], None] | None = None
        attempts.report = self.report

    # -- what the executor tells the poll thread ---------------------------------------------

    @property
    def recent_handler_seconds(self) -> float:
        batches = self._batches
        return batches.recent_handler_seconds if batches else self._recent_handler_seconds

    def handler_seconds_p99(self, window: float = 60.0) -> float | None:
        """The 99th percentile of the calls timed one by one in the last `window` seconds
        (retries included, their waits not); None when there were none."""
        since = self.clock.monotonic() - window
        recent = sorted(seconds for when, seconds in self._timed.copy() if when >= since)
        if not recent:
            return None
        return recent[max(0, math.ceil(0.99 * len(recent)) - 1)]

    def report(self, completions: list[Completion]) -> None:
        """Hand completions to the poll thread: at once from a thread; gathered for
        REPORT_AFTER on the loop."""
        if self._awaiting:
            self._gathered += completions
            if not self._flush_scheduled:
                self._schedule_flush()
            return
        self._put(completions)

    def _put(self, completions: list[Completion]) -> None:
        self._completions.put(completions)
        if self.attempts.observers:
            self.attempts.reported(completions)

    def _schedule_flush(self) -> None:
        self._flush_scheduled = True
        assert self.flush_later is not None
        self.flush_later()

    def flush_gathered(self) -> None:
        """Report what an async handler's chunks finished and gathered (on the loop)."""
        self._flush_scheduled = False
        self._count_busy(self._busy_seconds, self._busy_calls)
        self._busy_seconds, self._busy_calls = 0.0, 0
        report = self._gathered
        if self._unreported:
            # One completion per lease, whatever number of its lanes finished something: the
            # poll thread's work is per completion.
            finished: dict[Lease, list[int]] = {}
            for lease, run in self._unreported.values():
                if run:
                    offsets = finished.get(lease)
                    if offsets is None:
                        finished[lease] = run.copy()
                    else:
                        offsets += run
                    run.clear()
            self._unreported.clear()
            report += [_completion((lease, sorted(o), FINISHED)) for lease, o in finished.items()]
        if report:
            self._gathered = []
            self._put(report)

    def _count_busy(self, seconds: float, calls: int) -> None:
        if calls:
            self._recent_handler_seconds = seconds / calls
            self._handler_seconds.inc(seconds)

    # -- the lanes (the driver holds `lock`) -----------------------------------------------

    def ready_locked(self) -> bool:
        return bool(self._lanes)

    def queue_locked(self, runs: list[Run]) -> int:
        """Queue runs on their lanes; how many workers there is new work for."""
        return self._lanes.submit(runs)

    def take_locked(self) -> tuple[Lane, deque[Dispatched]] | None:
        return self._lanes.take()

    def release_locked(self, lane: Lane) -> bool:
        """True when the lane was queued again (new messages came meanwhile)."""
        return self._lanes.release(lane)

    def revoke_locked(self, leases: Sequence[Lease]) -> list[Dispatched]:
        """Mark the leases revoked and take their queued, unstarted messages off the lanes
        (those the executor may still give up: see `_claimed`). The driver then wakes
        whatever waits on them."""
        for lease in leases:
            lease.revoked = True
        return self._claimed(self._lanes.drop(leases))

    @staticmethod
    def leases_of(lane: Lane, chunk: deque[Dispatched]) -> Collection[Lease]:
        """The leases a worker works on with this chunk (a batch of the shared lane mixes
        them)."""
        return {m.lease for m in chunk} if not lane.exclusive else (chunk[0].lease,)

    # -- running a chunk -----------------------------------------------------------------------

    def work(self, lane: Lane, chunk: deque[Dispatched]) -> Work:
        """Run a chunk taken from a lane, as a generator of steps for the driver. Every message
        of the chunk is reported exactly once, also when the driver closes the generator
        early (a cancelled coroutine): what was not finished is reported not finished."""
        if self._batches is not None:
            return self._batch(lane, chunk)
        return self._chunk(chunk)

    def _chunk(self, chunk: deque[Dispatched]) -> Work:
        """A chunk of single messages: all of one lease, in order (exclusive lanes are keyed
        by lease; the shared lane hands out one message at a time)."""
        lease = chunk[0].lease
        report: list[Completion] = []
        # Offsets finished one after another: reported as one completion, which the poll
        # thread's tracker passes over in one step (they are in fetch order).
        run: list[int] = []
        finished = run.append
        clock = self.clock.monotonic
        started = reported_at = yielded = clock()
        busy = 0.0  # handler time not yet counted in the metric: it is added per report
        calls = 0  # handler calls in `busy`
        waited = 0.0  # time of this stretch's failure path that was not in handler calls
        # The clock is read after every call while handlers are slow (or not known yet), and
        # after every CLOCK_EVERY calls once they are fast.
        every = 1
        # Finished work (and outcomes settled meanwhile) is reported between stretches:
        # before every call while handlers are slow (one report per message costs nothing
        # then), else once it is older than REPORT_EVERY. Within a stretch of fast calls it is
        # not: a call that blocks a thread there holds back what finished earlier in the
        # stretch until it returns (docs/architecture.md, Departures). On the loop, what
        # finishes is also gathered as it finishes (`_unreported`), so a call that awaits for
        # long holds nothing back.
        due = False
        awaiting = self._awaiting
        unreported, key, entry = self._unreported, id(run), (lease, run)
        # The common case (auto ack, no output, no tracing) calls the handler inline; Attempts
        # takes over only once it raises. Traced, a def handler is called inline in its span
        # too (_traced_inline), an async def one takes Attempts' path in its span (the span
        # must cover the await): chosen here, once per chunk, so that tracing off costs the
        # loop nothing
        # (callgrind, broker-less S1: 44.2-45.3k instructions a message with this choice,
        # 44.3-45.5k without it; docs/tracing.md, Cost).
        # exactly_once takes Attempts' path too: app.producer's sends during a call are
        # collected there and held with the message.
        inline = (
            not self._manual
            and self.spec.output is None
            and self.spec.processing_guarantee != "exactly_once"
        )
        plain = inline and self._spans is None
        attempt: _Attempt = self._attempt if self._spans is None else self._traced
        call = self.attempts.call
        if inline and not plain and not awaiting:
            # Traced, a def handler is called inline too, in its span (_traced_inline).
            plain = True
            call, attempt = self._traced_inline(call)
        timed = self._timed.append
        msg: Dispatched | None = None
        # Deferred acknowledgements (defer_acks): messages whose handler returned and whose
        # outputs are produced but not all acknowledged yet, in lane order; a later message
        # that finished waits behind them, so that `run` stays in order and an output that
        # fails runs its message and every later one of the lane again, in order, as a replay
        # after a crash would; the first takes the failure path (Attempts picks up the held
        # error with its failures so far: `retries` counts the refusals, then the DLQ).
        defer = self.defer_acks
        pending: deque[Dispatched] = deque()

        def acknowledged(waited: bool = False) -> None:
            # Finish the pending messages whose outputs are all acknowledged, oldest first,
            # up to the first that is not. Once the chunk `waited` for them (no message is
            # running then), the first not acknowledged runs again with those after it:
            # failed, or not done within the produce timeout.
            while pending:
                head = pending[0]
                error: BaseException | None = None
                for future in getattr(head, "unacked", None) or ():
                    if not future.done():
                        error = TimeoutError(
                            f"an output of {head.topic}[{head.partition}]@{head.offset} was "
                            "not acknowledged within the produce timeout"
                        )
                    else:
                        error = future.exception()
                    if error is not None:
                        break
                if error is not None:
                    if not waited:
                        return
                    head.hold_nack(error, head.attempt - 1)
                    for again in pending:
                        again.unacked = None
                    chunk.extendleft(reversed(pending))
                    pending.clear()
                    return
                pending.popleft()
                head.unacked = None
                finished(head.offset)

        def outstanding() -> Acks:
            return Acks([f for m in pending for f in getattr(m, "unacked", None) or ()])

        def flush() -> None:
            # On the loop, the finished run is gathered already (`_unreported`), merged by
            # lease with the other chunks' runs, and handler time goes to the gathering too:
            # a completion of its own per flush would be one per message for the poll thread.
            nonlocal report, reported_at, busy, calls
            if pending:
                acknowledged()
            if not awaiting:
                if run:
                    report.append(_completion((lease, run.copy(), FINISHED)))
                    run.clear()
                self._count_busy(busy, calls)
                busy, calls = 0.0, 0
                reported_at = clock()
            if report:
                self.report(report)
                report = []

        try:
            while chunk or pending:
                if lease.revoked:
                    if pending:
                        # What is acknowledged by then is finished, and committed by the
                        # revoke: the next owner would run it again otherwise.
                        yield outstanding()
                        acknowledged()
                    break
                if not chunk:
                    # Every message of the chunk ran: wait for its outputs' acknowledgements
                    # (one wait for the chunk, where a worker used to wait per message).
                    yield outstanding()
                    acknowledged(waited=True)
                    flush()
                    continue
                if due and (run or report or pending):
                    flush()
                # A stretch of calls between two clock readings: the clock is only read,
                # and finished work only reported, between stretches.
                before = len(chunk)
                for _ in range(every if every < before else before):
                    if lease.revoked:
                        break
                    # Popped, not iterated: a handled message is freed at once.
                    msg = chunk.popleft()
                    failed: BaseException | None = None
                    if plain:
                        try:
                            result = call(msg)
                            if awaiting:
                                yield result
                        except GeneratorExit:
                            raise
                        except BaseException as exc:  # noqa: BLE001 - the policy decides
                            failed = exc
                        else:
                            finished(msg.offset)
                            if awaiting:
                                unreported[key] = entry
                                if not self._flush_scheduled:
                                    self._schedule_flush()
                            msg = None
                            continue
                    # Not inside the except block: the retries would run while it is
                    # handled, and each attempt's error would chain the previous ones.
                    entered = clock()
                    outcome, seconds = yield from attempt(msg, failed, flush)
                    waited += clock() - entered - seconds
                    if outcome is FINISHED:
                        if defer and (pending or getattr(msg, "unacked", None)):
                            pending.append(msg)
                            msg = None
                            continue
                        finished(msg.offset)
                        if awaiting:
                            unreported[key] = entry
                            if not self._flush_scheduled:
                                self._schedule_flush()
                    else:
                        self._settle(msg, outcome, run, report)
                        flush()
                    msg = None
                measured = before - len(chunk)
                now = clock()
                elapsed = now - started - waited
                started, waited = now, 0.0
                if measured == 1:
                    timed((now, elapsed))
                if awaiting:
                    self._busy_seconds += elapsed
                    self._busy_calls += measured
                    # Groups of calls between clock readings, every other one a single call
                    # (timed alone: the p99's sample), the others as many as take about
                    # REPORT_EVERY, at most CLOCK_EVERY: a slow async handler awaits and the
                    # loop runs the others meanwhile, so a reading after each of its calls
                    # (as on a thread) bought nothing, and it was 0.4 of the loop's 7.6 us a
                    # message at 512 coroutines of 2 ms (S2's async row, broker-less). One
                    # that blocks the loop still gives it back within about REPORT_EVERY.
                    if measured > 1:
                        every = 1
                    elif elapsed * CLOCK_EVERY <= REPORT_EVERY:
                        every = CLOCK_EVERY
                    else:
                        every = max(1, int(REPORT_EVERY / elapsed))
                else:
                    busy += elapsed
                    calls += measured
                    slow = elapsed >= SLOW_HANDLER * measured
                    every = 1 if slow else CLOCK_EVERY
                    due = slow or now - reported_at >= REPORT_EVERY
                if awaiting and now - yielded >= REPORT_EVERY:
                    # Handlers that never suspend would keep the loop to this lane: let the
                    # others (and the report) have it.
                    yielded = now
                    yield Idle(0.0, _nothing)
        except GeneratorExit:
            self._warn_cancelled([*chunk, *([msg] if msg is not None else [])])
            raise
        finally:
            # Done, revoked, or closed early (a cancelled coroutine): what is left, with the
            # message that was running, was not finished.
            unreported.pop(key, None)
            if run:  # what the gathering did not take yet, reported by this chunk now
                report.append(_completion((lease, run.copy(), FINISHED)))
                run.clear()
            if msg is not None:
                chunk.appendleft(msg)
            if pending:  # produced, not known to be acknowledged: not finished
                for again in pending:
                    again.unacked = None
                chunk.extendleft(reversed(pending))
                pending.clear()
            left = self._claimed(list(chunk))
            chunk.clear()
            if left:
                report += not_finished(left)
            flush()

    def _warn_cancelled(self, left: list[Dispatched]) -> None:
        if left:
            log.warning(
                "cancelled an async handler's work that outlived its partitions' revoke (or "
                "the executor's close); its unfinished messages are not committed and will "
                "be delivered again",
                handler=self.spec.name,
                not_finished=len(left),
                partitions=sorted({str(m.lease.partition) for m in left}),
            )

    def _attempt(
        self, msg: Dispatched, failed: BaseException | None, flush: Callable[[], None]
    ) -> Generator[Any, Any, tuple[Outcome, float]]:
        """The message under the failure policy (Attempts): its outcome, and the seconds of
        handler calls in it. A bug of the runtime's own leaves it unfinished (logged), never
        skipped."""
        try:
            return (yield from self.attempts.steps(msg, failed, before_wait=flush))
        except GeneratorExit:
            raise
        except BaseException:
            log.exception(
                "failed to run the handler",
                handler=self.spec.name,
                topic=msg.topic,
                partition=msg.partition,
                offset=msg.offset,
            )
            return NOT_FINISHED, 0.0

    def _traced(
        self, msg: Dispatched, failed: BaseException | None, flush: Callable[[], None]
    ) -> Generator[Any, Any, tuple[Outcome, float]]:
        """`_attempt` in the message's process span, the current context meanwhile: in this
        worker thread, or in the task of the event loop that drives this generator (each task
        runs in a context of its own, so coroutines of other lanes never see it)."""
        spans = self._spans
        assert spans is not None
        processing = spans.start(msg)
        try:
            return (yield from self._attempt(msg, failed, flush))
        finally:
            spans.end(processing)

    def _traced_inline(self, call: Callable[[Any], Any]) -> tuple[Callable[[Any], Any], _Attempt]:
        """The handler call and the failure path of a traced chunk of a def handler that the
        loop calls inline: the call opens the message's span and ends it when the call
        returns; when it raises, the span stays open and current, and the failure path that
        follows at once on this thread (its attempts, backoffs, DLQ write) runs in it and
        ends it, as _traced does. Attempts' path for every message cost ~2 us of the sampled-
        out message's ~9 us (docs/tracing.md, Cost); chosen once per chunk, so tracing off
        still calls the handler as before."""
        spans = self._spans
        assert spans is not None
        raised: list[Processing] = []  # the span of the call that raised, at most one

        def traced_call(msg: Dispatched) -> Any:
            processing = spans.start(msg)
            try:
                result = call(msg)
            except BaseException:
                raised.append(processing)
                raise
            spans.end(processing)
            return result

        def failure_path(
            msg: Dispatched, failed: BaseException | None, flush: Callable[[], None]
        ) -> Generator[Any, Any, tuple[Outcome, float]]:
            processing = raised.pop() if raised else spans.start(msg)
            try:
                return (yield from self._attempt(msg, failed, flush))
            finally:
                spans.end(processing)

        return traced_call, failure_path

    def _settle(
        self, msg: Dispatched, outcome: Outcome, run: list[int], report: list[Completion]
    ) -> None:
        """Account for an outcome other than finished: after what finished before it."""
        # A manual-ack message is reported exactly once: by msg.ack(), or here.
        if outcome is AWAITING_ACK:
            if not msg.acked:
                for observer in self.attempts.observers:
                    observer.awaiting_ack(msg)
            return
        if self._manual and not msg.claim():
            return
        if run:
            report.append(_completion((msg.lease, run.copy(), FINISHED)))
            run.clear()
        report.append(_completion((msg.lease, [msg.offset], outcome)))

    def _claimed(self, messages: list[Dispatched]) -> list[Dispatched]:
        """The messages this executor may still report as not finished: all of them, but for
        manual acks only those it claims. A manual-ack message may be in the user's hands
        (nacked after its handler returned, and queued again), and an ack() after it was given
        up would report it a second time: at shutdown the poll thread's count of messages in
        flight would then go below zero and it would wait out shutdown_timeout."""
        if not self._manual:
            return messages
        return [m for m in messages if m.claim()]

    # -- batch handlers ------------------------------------------------------------------------

    def _batch(self, lane: Lane, chunk: deque[Dispatched]) -> Work:
        batches = self._batches
        assert batches is not None
        pending = yield from self._fill(lane, chunk)
        chunk.clear()
        try:
            # Takes what it reports off `pending`.
            yield from batches.run(pending, self.report)
        except GeneratorExit:
            self._warn_cancelled(pending)
            raise
        finally:
            # Closed early (a cancelled coroutine): what it had not reported is given up.
            left = self._claimed(pending)
            if left:
                self.report(not_finished(left))

    def _fill(self, lane: Lane, chunk: deque[Dispatched]) -> Generator[Idle, None, list[Any]]:
        """A batch handler's worker owns an exclusive lane, so new messages of it queue up
        for it: take them for at most max_wait, up to max_size."""
        policy = self.spec.batch
        assert policy is not None
        clock = self.clock.monotonic
        deadline = clock() + policy.max_wait
        while lane.exclusive and len(chunk) < policy.max_size:
            with self.lock:
                more = self._lanes.top_up(lane)
            if more:
                chunk.extend(more)
                continue
            remaining = deadline - clock()
            if remaining <= 0 or self.closing or chunk[0].lease.revoked:
                break
            yield Idle(min(remaining, 0.01), lambda: bool(lane.queue))
        return list(chunk)


class Driver:
    """What the two drivers share beside the core: the Executor's view of the core's
    timings, and how each step is carried out, by its type (`_carry`: the driver's methods,
    which block on a thread and await on the loop: the only thing in which they differ)."""

    def __init__(self, core: ExecutorCore, outputs: Outputs | None) -> None:
        self.core = core
        self._outputs = outputs
        self._clock = core.clock
        self._carry: dict[type, Callable[[Any], Any]] = {
            Emit: self._emit,
            Acks: self._acks,
            Write: self._write,
            Sleep: self._sleep,
            Idle: self._idle,
        }

    @property
    def recent_handler_seconds(self) -> float:
        return self.core.recent_handler_seconds

    def handler_seconds_p99(self, window: float = 60.0) -> float | None:
        return self.core.handler_seconds_p99(window)

    def _emit(self, step: Emit) -> Any:
        raise NotImplementedError

    def _acks(self, step: Acks) -> Any:
        raise NotImplementedError

    def _write(self, step: Write) -> Any:
        raise NotImplementedError

    def _sleep(self, step: Sleep) -> Any:
        raise NotImplementedError

    def _idle(self, step: Idle) -> Any:
        raise NotImplementedError


# -- lanes ----------------------------------------------------------------------------------


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

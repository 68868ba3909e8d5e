"""The worker pool: `concurrency` threads that take a ready lane and run the handler on its
messages. The executor for plain `def` handlers.

One lock (inside a Condition) guards the lanes. It is taken once per batch by the poll thread
and once per chunk by a worker. Workers report runs (offsets of one partition with one
outcome) and flush them at least every REPORT_EVERY, before every message once handlers are
slow, and before any wait.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Sequence
from typing import Any, TypeVar

from kafkaworker.handlers import HandlerSpec
from kafkaworker.message import Message
from kafkaworker.observability.metrics import Metrics
from kafkaworker.runtime.clock import ManualClock
from kafkaworker.runtime.execute.attempts import Attempts
from kafkaworker.runtime.execute.base import (
    CLOCK_EVERY,
    FINISHED,
    REPORT_EVERY,
    SLOW_HANDLER,
    LaneExecutor,
)
from kafkaworker.runtime.execute.batches import BatchRunner
from kafkaworker.runtime.execute.lanes import Lane
from kafkaworker.runtime.execute.outputs import Outputs
from kafkaworker.runtime.execute.revocations import Revocations
from kafkaworker.runtime.execute.steps import Call, Called, Emit, Sleep, Step, Write
from kafkaworker.runtime.handoff import Completion, CompletionQueue, Outcome, Run
from kafkaworker.runtime.poll.partitions import PartitionState

T = TypeVar("T")


class WorkerPool(LaneExecutor):
    """`concurrency` worker threads draining one handler's lanes."""

    def __init__(
        self,
        spec: HandlerSpec,
        attempts: Attempts,
        completions: CompletionQueue,
        *,
        name: str,
        revocations: Revocations,
        metrics: Metrics | None = None,
        outputs: Outputs | None = None,
        batches: BatchRunner | None = None,
        virtual: ManualClock | None = None,
    ) -> None:
        super().__init__(
            spec,
            attempts,
            completions,
            metrics=metrics,
            outputs=outputs,
            batches=batches,
            virtual=virtual,
        )
        self._revocations = revocations
        self._cond = threading.Condition(threading.Lock())
        self._closing = False
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
            for i in range(spec.concurrency)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    # -- the poll thread's side ---------------------------------------------------------------

    def submit(self, runs: list[Run]) -> None:
        with self._cond:
            woken = self._lanes.submit(runs)
            if woken:
                self._cond.notify(woken)

    def revoke(self, partitions: Sequence[PartitionState]) -> list[Message[Any]]:
        self._revocations.revoke(partitions)
        with self._cond:
            dropped = self._lanes.drop(partitions)
        return self._claimed(dropped)

    def cancel(self, partitions: Sequence[PartitionState]) -> None:
        """A thread cannot be cancelled: a call that outlives its revoke finishes and is
        reported as usual, and the poll thread ignores the report (the partition is forgotten
        by then, so nothing is committed for it)."""

    def close(self, timeout: float = 1.0) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    # -- worker threads -----------------------------------------------------------------------

    def _take(self) -> tuple[Lane, deque[Message[Any]]] | None:
        with self._cond:
            while not self._lanes:
                if self._closing:
                    return None
                self._cond.wait()
            return self._lanes.take()

    def _release(self, lane: Lane) -> None:
        with self._cond:
            if self._lanes.release(lane):
                # This worker takes the next ready lane itself; wake one more in case there
                # are several (new messages came while the lane was active).
                self._cond.notify()

    def _work(self) -> None:
        while (taken := self._take()) is not None:
            lane, chunk = taken
            try:
                if self._batches is not None:
                    self._drive(self._batches.run(self._fill(lane, chunk)))
                else:
                    self._run_chunk(chunk)
            finally:
                if lane.exclusive:
                    self._release(lane)

    def _fill(self, lane: Lane, chunk: deque[Message[Any]]) -> list[Message[Any]]:
        """A batch handler's worker owns an exclusive lane, so new messages of it queue up
        for it: take them for at most max_wait, up to max_size."""
        policy = self.spec.batch
        assert policy is not None
        deadline = time.monotonic() + policy.max_wait
        while lane.exclusive and len(chunk) < policy.max_size:
            with self._cond:
                if lane.queue:
                    chunk.extend(self._lanes.top_up(lane))
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closing or chunk[0]._state.revoked:
                    break
                self._cond.wait(min(remaining, 0.01))
        return list(chunk)

    def _run_chunk(self, chunk: deque[Message[Any]]) -> None:
        """Run a chunk taken from one lane: all of one partition, in order (exclusive lanes
        are keyed by partition state; the shared lane hands out one message at a time)."""
        state: PartitionState = chunk[0]._state
        report: list[Completion] = []
        # Offsets finished one after another: reported as one completion, which the poll
        # thread's tracker passes over in one step (they are in fetch order).
        run: list[int] = []
        started = reported_at = time.monotonic()
        busy = 0.0  # handler time not yet counted in the metric: it is added per report
        calls = 0  # handler calls in `busy`
        # The clock is read after every call while handlers are slow (or not known yet), and
        # after every CLOCK_EVERY calls once they are fast: a reading per message was a tenth
        # of the per-message cost of a decode-only handler.
        every = 1
        # Finished work, and outcomes settled meanwhile (dead-lettered), is reported between
        # stretches: before every call while handlers are slow (one report per message costs
        # nothing then), else once it is older than the reporting interval. Within a stretch
        # of fast calls it is not: a call that blocks there holds back what finished earlier in
        # the stretch until it returns (docs/architecture.md, Departures).
        due = False
        put = self._completions.put
        observers = self._attempts.observers  # the test client's: told of every report

        def flush() -> None:
            nonlocal report, reported_at, busy, calls
            if run:
                report.append(Completion(state, run.copy(), FINISHED))
                run.clear()
            if report:
                put(report)
                if observers:
                    self._attempts.reported(report)
                report = []
            if calls:
                self._recent_handler_seconds = busy / calls
                self._handler_seconds.inc(busy)
                busy = 0.0
                calls = 0
            reported_at = time.monotonic()

        def settle(msg: Message[Any], outcome: Outcome) -> None:
            self._settle(msg, outcome, run, report.append)

        # The common case (auto ack, no output) calls the handler inline; Attempts takes over
        # only once it raises.
        plain = not self._manual and self.spec.output is None
        call = self.spec.call()
        clock = time.monotonic
        finished = run.append
        timed = self._timed.append
        while chunk:
            if state.revoked:
                # Never started: given up, so never committed past.
                report += self._not_finished(chunk)
                chunk.clear()
                break
            if due and (run or report):
                flush()
            # A stretch of calls between two clock readings: the clock is only read, and
            # finished work only reported, between stretches.
            before = len(chunk)
            for _ in range(every if every < before else before):
                if state.revoked:
                    break
                # Popped, not iterated: a handled message is freed at once.
                msg = chunk.popleft()
                if plain:
                    try:
                        call(msg)
                    except BaseException as exc:  # noqa: BLE001 - the failure policy decides
                        failed = exc
                    else:
                        finished(msg.offset)
                        continue
                    # Not inside the except block: the retries would run while it is handled,
                    # and each attempt's error would chain the previous ones as its context.
                    settle(msg, self._attempt(msg, flush, failed))
                else:
                    settle(msg, self._attempt(msg, flush, None))
            measured = before - len(chunk)
            now = clock()
            elapsed = now - started
            busy += elapsed
            calls += measured
            if measured == 1:
                timed((now, elapsed))
            slow = elapsed >= SLOW_HANDLER * measured
            every = 1 if slow else CLOCK_EVERY
            due = slow or now - reported_at >= REPORT_EVERY
            started = now
        flush()

    def _attempt(
        self, msg: Message[Any], flush: Callable[[], None], failed: BaseException | None
    ) -> Outcome:
        """The message under the failure policy (Attempts), as its outcome."""
        try:
            return self._drive(self._attempts.steps(msg, failed), flush)
        except BaseException:  # noqa: BLE001 - logged with its traceback, never skipped
            return self._runtime_bug(msg)

    def _drive(self, steps: Generator[Step, Any, T], flush: Callable[[], None] | None = None) -> T:
        """Carry out the failure path's steps in this worker thread, blocking. `flush`
        reports what this worker finished before it waits (it must not wait out a backoff)."""
        reply: Any = None
        while True:
            try:
                step = steps.send(reply)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
            if isinstance(step, Call):
                try:
                    reply = Called(step.func(step.arg))
                except BaseException as exc:  # noqa: BLE001 - the failure policy decides
                    reply = Called(error=exc)
                continue
            if isinstance(step, Emit):
                assert self._outputs is not None
                reply = self._outputs.emit(step.msg, step.result)
                continue
            if flush is not None:
                flush()
            if isinstance(step, Sleep):
                reply = self._skipped_wait(step)
                if reply is None:
                    reply = self._revocations.wait_unless_revoked(step.partitions, step.seconds)
            else:
                assert isinstance(step, Write) and self._outputs is not None
                reply = self._outputs.write(step.record)

"""The executor for `async def` handlers: coroutines on the process's event loop, over the same
lanes as the worker pool.

The poll thread submits runs under a lock and wakes the loop; the loop starts a task per ready
lane, up to `concurrency` at once (a lane runs one coroutine at a time, which is what keeps
partition and key order). A task awaits the handler on each message of its chunk in order and
carries out the failure path's steps awaiting (a backoff is `asyncio.sleep`, cut short by a
revoke; a DLQ write awaits the broker without blocking the loop). Finished offsets are put on
the completion queue together, at most every REPORT_AFTER, so a thousand coroutines finishing
together make one report; what a lane's task finished is reported even while it awaits its
next message's I/O, not only when its chunk is done.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
import time
from collections import deque
from collections.abc import Collection, Generator, Sequence
from typing import Any, TypeVar

import structlog

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
from kafkaworker.runtime.execute.event_loop import EventLoopThread, cancelling
from kafkaworker.runtime.execute.lanes import Lane
from kafkaworker.runtime.execute.outputs import Outputs
from kafkaworker.runtime.execute.steps import Call, Called, Emit, Sleep, Step, Write
from kafkaworker.runtime.handoff import Completion, CompletionQueue, Outcome, Run
from kafkaworker.runtime.poll.partitions import PartitionState

log = structlog.get_logger("kafkaworker.aio")
T = TypeVar("T")
# Finished offsets are reported this long after the first of them, together with whatever
# else finished meanwhile: each report wakes the poll thread, which then competes with the
# loop for the GIL. Reporting every loop iteration, 512 coroutines sleeping 2 ms each made
# the poll thread the busiest thread of the process (with uvloop's fast iterations).
REPORT_AFTER = 0.005
# Completion((state, offsets, outcome)) without the Python frame of NamedTuple's __new__.
_completion = functools.partial(tuple.__new__, Completion)


class AsyncPool(LaneExecutor):
    """Up to `concurrency` coroutines running one handler's lanes on the event loop."""

    def __init__(
        self,
        spec: HandlerSpec,
        attempts: Attempts,
        completions: CompletionQueue,
        *,
        loop: EventLoopThread,
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
        self._loop_thread = loop
        self._loop = loop.loop
        self._lock = threading.Lock()  # the lanes: the poll thread submits, the loop takes
        # The rest is the loop thread's.
        self._running: dict[asyncio.Task[None], Collection[PartitionState]] = {}
        # Runs of finished offsets that running chunks have not reported yet, by id(run):
        # the end of the loop iteration reports them, so a chunk whose next call awaits for
        # long does not hold them back.
        self._unreported: dict[int, tuple[PartitionState, list[int]]] = {}
        self._report: list[Completion] = []
        self._flush_scheduled = False
        self._revoked = asyncio.Event()  # set (and replaced) on every revoke
        self._closing = False
        # Handler time not yet in the metric: added with the next report, not per call.
        self._busy_seconds = 0.0
        self._busy_calls = 0
        loop.watch(spec.name, spec.func)

    def start(self) -> None:
        """Nothing to start: the loop runs already."""

    # -- the poll thread's side -----------------------------------------------------------

    def submit(self, runs: list[Run]) -> None:
        with self._lock:
            woken = self._lanes.submit(runs)
        if woken:
            self._loop_thread.call_soon(self._start_lanes)

    def revoke(self, partitions: Sequence[PartitionState]) -> list[Message[Any]]:
        for state in partitions:
            state.revoked = True
        self._loop_thread.call_soon(self._wake_waiters)
        with self._lock:
            dropped = self._lanes.drop(partitions)
        return self._claimed(dropped)

    def cancel(self, partitions: Sequence[PartitionState]) -> None:
        """Cancel the coroutines still running for these (revoked) partitions: what they
        had not finished is reported not finished, so never committed past. A coroutine whose
        batch also holds messages of a partition still assigned (ordering="none" mixes them;
        a cooperative rebalance revokes some partitions only) runs on: those messages would be
        given up, and since their partition stays assigned, nothing would deliver them again
        and its commit would never move past them."""
        wanted = set(map(id, partitions))

        def cancel() -> None:
            for task, states in list(self._running.items()):
                if any(id(s) in wanted for s in states) and all(s.revoked for s in states):
                    task.cancel()

        self._loop_thread.call_soon(cancel)

    def close(self, timeout: float = 1.0) -> None:
        """Stop starting lanes and cancel the coroutines still running."""

        async def close() -> None:
            self._closing = True
            tasks = list(self._running)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._flush()

        try:
            self._loop_thread.run(close(), timeout)
        except Exception:  # noqa: BLE001 - closing anyway (the loop may be gone)
            log.warning("async handler tasks did not stop in time", handler=self.spec.name)

    # -- the loop thread ------------------------------------------------------------------

    def _start_lanes(self) -> None:
        while not self._closing and len(self._running) < self.spec.concurrency:
            with self._lock:
                taken = self._lanes.take()
            if taken is None:
                return
            lane, chunk = taken
            task = self._loop.create_task(self._run_lanes(lane, chunk))
            self._running[task] = self._states(lane, chunk)

    @staticmethod
    def _states(lane: Lane, chunk: deque[Message[Any]]) -> Collection[PartitionState]:
        return {m._state for m in chunk} if not lane.exclusive else (chunk[0]._state,)

    async def _run_lanes(self, lane: Lane, chunk: deque[Message[Any]]) -> None:
        """Run lane after lane while some are ready. A task per chunk cost about as much as
        the chunk's own bookkeeping (with key lanes, 1000 keys and 512 coroutines, a chunk is
        a few messages): in S2's async key/512 row, CPU per message went from 16.9, 11.6,
        10.7, 13.8 to 14.4, 10.3, 10.5, 11.0 s per million (alternating runs, one loaded
        machine). `_running` says what partitions the task works on now, for cancel()."""
        task = asyncio.current_task()
        assert task is not None
        yielded = time.monotonic()
        try:
            while True:
                try:
                    cancelled = await self._run_lane(lane, chunk)
                finally:
                    if lane.exclusive:
                        with self._lock:
                            self._lanes.release(lane)
                # A cancelled task ends (its cancel request is spent on this chunk); so do
                # the tasks of an executor closing.
                if cancelled or self._closing:
                    return
                now = time.monotonic()
                if now - yielded >= REPORT_EVERY:
                    # Chunks of handlers that never suspend, one after another, would keep
                    # the loop to this task. Cancelled here, the task holds nothing.
                    yielded = now
                    await asyncio.sleep(0)
                    if self._closing:
                        return
                with self._lock:
                    taken = self._lanes.take()
                if taken is None:
                    return
                lane, chunk = taken
                self._running[task] = self._states(lane, chunk)
        finally:
            self._running.pop(task, None)
            self._start_lanes()

    async def _run_lane(self, lane: Lane, chunk: deque[Message[Any]]) -> bool:
        """Run a lane's chunk; what is left in `chunk` afterwards was not reported, and is
        reported not finished here. True when the task was cancelled."""
        try:
            if self._batches is not None:
                await self._run_batches(lane, chunk)
            else:
                await self._run_chunk(chunk)
        except asyncio.CancelledError:
            # Not re-raised: the task ends after this chunk either way (_run_lanes).
            if chunk:
                log.warning(
                    "cancelled an async handler's work that outlived its partitions' revoke "
                    "(or the executor's close); its unfinished messages are not committed and "
                    "will be delivered again",
                    handler=self.spec.name,
                    not_finished=len(chunk),
                    partitions=sorted({str(m._state.topic_partition) for m in chunk}),
                )
            return True
        except Exception:
            # A bug of the runtime's own: what the chunk had not reported stays unfinished.
            log.exception("an async lane failed", handler=self.spec.name)
        finally:
            if chunk:
                for completion in self._not_finished(chunk):
                    self._put(completion)
                chunk.clear()
        return False

    async def _run_batches(self, lane: Lane, chunk: deque[Message[Any]]) -> None:
        assert self._batches is not None
        pending = await self._fill(lane, chunk)
        chunk.clear()
        steps = self._batches.run(pending)  # takes what it reports off `pending`
        try:
            await self._drive(steps)
        finally:
            # Cancelled: the generator is closed now, not whenever it is collected, and what
            # it had not reported goes back to the chunk, for _run_lane to report.
            steps.close()
            chunk.extend(pending)

    async def _fill(self, lane: Lane, chunk: deque[Message[Any]]) -> list[Message[Any]]:
        """Top a batch up with what comes for its lane, for at most max_wait."""
        policy = self.spec.batch
        assert policy is not None
        deadline = time.monotonic() + policy.max_wait
        while lane.exclusive and len(chunk) < policy.max_size:
            with self._lock:
                more = self._lanes.top_up(lane)
            if more:
                chunk.extend(more)
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._closing or chunk[0]._state.revoked:
                break
            await asyncio.sleep(min(remaining, 0.01))
        return list(chunk)

    async def _run_chunk(self, chunk: deque[Message[Any]]) -> None:
        """A chunk of one lane: all of one partition, in order, one coroutine at a time."""
        state: PartitionState = chunk[0]._state
        run: list[int] = []
        finished = run.append
        key, entry = id(run), (state, run)
        unreported = self._unreported
        manual = self._manual
        plain = not manual and self.spec.output is None
        call = self._attempts.call
        clock = time.monotonic
        started = yielded = time.monotonic()
        every = 1  # calls between clock readings: 1 while slow (or not known), else more
        msg: Message[Any] | None = None
        try:
            while chunk:
                if state.revoked:
                    break
                before = len(chunk)
                for _ in range(every if every < before else before):
                    if state.revoked:
                        break
                    msg = chunk.popleft()
                    if plain:
                        failed: BaseException | None = None
                        try:
                            await call(msg)
                        except BaseException as exc:  # the policy decides
                            if isinstance(exc, asyncio.CancelledError) and cancelling():
                                raise
                            failed = exc
                        if failed is None:
                            finished(msg.offset)
                        else:
                            # Outside the except block (see pool.py).
                            self._settle(msg, await self._attempt(msg, failed), run, self._put)
                    else:
                        self._settle(msg, await self._attempt(msg, None), run, self._put)
                    msg = None
                    if run:
                        # Reported within REPORT_AFTER even while the next call awaits.
                        unreported[key] = entry
                        if not self._flush_scheduled:
                            self._schedule_flush()
                measured = before - len(chunk)
                now = clock()
                elapsed = now - started
                started = now
                self._busy_seconds += elapsed
                self._busy_calls += measured
                if measured == 1:
                    self._timed.append((now, elapsed))
                every = 1 if elapsed >= SLOW_HANDLER * measured else CLOCK_EVERY
                if now - yielded >= REPORT_EVERY:
                    # Handlers that never suspend would keep the loop to this lane: let the
                    # others (and the report) have it.
                    yielded = now
                    await asyncio.sleep(0)
        finally:
            # Cancelled, revoked, or done: what is left in the chunk (with the message that
            # was running, if any) was not finished; _run_lane reports it so.
            unreported.pop(key, None)
            if run:
                self._put(Completion(state, run.copy(), FINISHED))
            if msg is not None:
                chunk.appendleft(msg)

    async def _attempt(self, msg: Message[Any], failed: BaseException | None) -> Outcome:
        try:
            return await self._drive(self._attempts.steps(msg, failed))
        except BaseException as exc:  # logged with its traceback, never skipped
            if isinstance(exc, asyncio.CancelledError) and cancelling():
                raise
            return self._runtime_bug(msg)

    async def _drive(self, steps: Generator[Step, Any, T]) -> T:
        """Carry out the failure path's steps on the loop, awaiting."""
        reply: Any = None
        while True:
            try:
                step = steps.send(reply)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
            if isinstance(step, Call):
                try:
                    result = step.func(step.arg)
                    if inspect.isawaitable(result):
                        result = await result
                    reply = Called(result)
                except BaseException as exc:  # the failure policy decides
                    if isinstance(exc, asyncio.CancelledError) and cancelling():
                        raise
                    reply = Called(error=exc)
            elif isinstance(step, Sleep):
                reply = self._skipped_wait(step)
                if reply is None:
                    reply = await self._wait_unless_revoked(step.partitions, step.seconds)
            elif isinstance(step, Emit):
                assert self._outputs is not None
                reply = await self._outputs.emit_async(step.msg, step.result)
            else:
                assert isinstance(step, Write) and self._outputs is not None
                reply = await self._outputs.write_async(step.record)

    async def _wait_unless_revoked(
        self, partitions: Collection[PartitionState], seconds: float
    ) -> bool:
        deadline = self._loop.time() + seconds
        while not any(s.revoked for s in partitions):
            remaining = deadline - self._loop.time()
            if remaining <= 0:
                return False
            try:
                await asyncio.wait_for(self._revoked.wait(), remaining)
            except TimeoutError:
                return any(s.revoked for s in partitions)
        return True

    def _wake_waiters(self) -> None:
        self._revoked.set()
        self._revoked = asyncio.Event()

    def _put(self, completion: Completion) -> None:
        """Report at the end of this loop iteration, with whatever else finished in it."""
        self._report.append(completion)
        if not self._flush_scheduled:
            self._schedule_flush()

    def _schedule_flush(self) -> None:
        self._flush_scheduled = True
        self._loop.call_later(REPORT_AFTER, self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._busy_calls:
            self._recent_handler_seconds = self._busy_seconds / self._busy_calls
            self._handler_seconds.inc(self._busy_seconds)
            self._busy_seconds = 0.0
            self._busy_calls = 0
        report = self._report
        if self._unreported:
            # One completion per partition, whatever number of its lanes finished something:
            # the poll thread's work is per completion.
            finished: dict[PartitionState, list[int]] = {}
            for state, run in self._unreported.values():
                if run:
                    offsets = finished.get(state)
                    if offsets is None:
                        finished[state] = run.copy()
                    else:
                        offsets += run
                    run.clear()
            self._unreported.clear()
            report += [_completion((s, sorted(o), FINISHED)) for s, o in finished.items()]
        if report:
            self._report = []
            self._completions.put(report)
            if self._attempts.observers:
                self._attempts.reported(report)

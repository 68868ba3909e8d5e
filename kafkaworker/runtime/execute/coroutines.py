"""AsyncPool: the event-loop driver of the executor core, for `async def` handlers.

The poll thread queues runs under the core's lock and wakes the loop; the loop starts a task
per ready lane, up to `concurrency` at once (a lane runs one coroutine at a time, which is what
keeps partition and key order). A task carries out the core's steps awaiting: an async
handler's call is the awaitable the core yields, a backoff waits on an event a revoke sets, a
DLQ write awaits the broker without blocking the loop. What the tasks finish is gathered and
reported every REPORT_AFTER (core.py).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Collection, Sequence
from typing import Any

import structlog

from kafkaworker.producer import TRANSACTION_SCOPE, TransactionScope
from kafkaworker.runtime.execute.core import (
    REPORT_AFTER,
    REPORT_EVERY,
    Driver,
    ExecutorCore,
    Lane,
    Work,
)
from kafkaworker.runtime.execute.event_loop import EventLoopThread, cancelling
from kafkaworker.runtime.execute.outputs import Outputs
from kafkaworker.runtime.execute.steps import Acks, Emit, Idle, Sleep, Write
from kafkaworker.runtime.handoff import Dispatched, Lease, Run

log = structlog.get_logger("kafkaworker.aio")


class AsyncPool(Driver):
    """Up to `concurrency` coroutines running one handler's lanes on the event loop."""

    def __init__(
        self, core: ExecutorCore, *, loop: EventLoopThread, outputs: Outputs | None = None
    ) -> None:
        super().__init__(core, outputs)
        self._loop_thread = loop
        self._loop = loop.loop
        core.flush_later = self._flush_later
        # The rest is the loop thread's.
        self._running: dict[asyncio.Task[None], Collection[Lease]] = {}
        self._revoked = asyncio.Event()  # set (and replaced) on every revoke
        self._never = asyncio.Event()  # a batch fill polls: nothing sets it
        loop.watch(core.spec.name, core.spec.func)

    def start(self) -> None:
        """Nothing to start: the loop runs already."""

    # -- the poll thread's side -----------------------------------------------------------

    def submit(self, runs: list[Run]) -> None:
        with self.core.lock:
            woken = self.core.queue_locked(runs)
        if woken:
            self._loop_thread.call_soon(self._start_lanes)

    def revoke(self, leases: Sequence[Lease]) -> list[Dispatched]:
        with self.core.lock:
            dropped = self.core.revoke_locked(leases)
        self._loop_thread.call_soon(self._wake_waiters)
        return dropped

    def cancel(self, leases: Sequence[Lease]) -> None:
        """Cancel the coroutines still running for these (revoked) leases: what they had not
        finished is reported not finished, so never committed past. A coroutine whose batch
        also holds messages of a partition still assigned (ordering="none" mixes them; a
        cooperative rebalance revokes some partitions only) runs on: those messages would be
        given up, and since their partition stays assigned, nothing would deliver them again
        and its commit would never move past them."""
        wanted = set(map(id, leases))

        def cancel() -> None:
            for task, running in list(self._running.items()):
                if any(id(x) in wanted for x in running) and all(x.revoked for x in running):
                    task.cancel()

        self._loop_thread.call_soon(cancel)

    def close(self, timeout: float = 1.0) -> None:
        """Stop starting lanes and cancel the coroutines still running."""
        core = self.core

        async def close() -> None:
            core.closing = True
            tasks = list(self._running)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            core.flush_gathered()

        try:
            self._loop_thread.run(close(), timeout)
        except Exception:  # noqa: BLE001 - closing anyway (the loop may be gone)
            log.warning("async handler tasks did not stop in time", handler=core.spec.name)

    # -- the loop thread ------------------------------------------------------------------

    def _start_lanes(self) -> None:
        core = self.core
        while not core.closing and len(self._running) < core.spec.concurrency:
            with core.lock:
                taken = core.take_locked()
            if taken is None:
                return
            lane, chunk = taken
            task = self._loop.create_task(self._run_lanes(lane, chunk))
            self._running[task] = core.leases_of(lane, chunk)

    async def _run_lanes(self, lane: Lane, chunk: deque[Dispatched]) -> None:
        """Run lane after lane while some are ready. A task per chunk cost about as much as
        the chunk's own bookkeeping (with key lanes, 1000 keys and 512 coroutines, a chunk is
        a few messages): in S2's async key/512 row, CPU per message went from 16.9, 11.6,
        10.7, 13.8 to 14.4, 10.3, 10.5, 11.0 s per million (alternating runs, one loaded
        machine). `_running` says what leases the task works on now, for cancel()."""
        core = self.core
        task = asyncio.current_task()
        assert task is not None
        clock = self._clock.monotonic
        yielded = clock()
        if core.spec.processing_guarantee == "exactly_once":
            TRANSACTION_SCOPE.set(TransactionScope(core.spec.name))  # this task's context only
        try:
            while True:
                try:
                    await self._drive(core.work(lane, chunk))
                except asyncio.CancelledError:
                    return  # its cancel request is spent: the task ends
                except Exception:  # a bug of the runtime's own: what was left is reported
                    log.exception("an async lane failed", handler=core.spec.name)
                finally:
                    if lane.exclusive:
                        with core.lock:
                            core.release_locked(lane)
                if core.closing:
                    return
                now = clock()
                if now - yielded >= REPORT_EVERY:
                    # Chunks of handlers that never suspend, one after another, would keep
                    # the loop to this task. Cancelled here, the task holds nothing.
                    yielded = now
                    await asyncio.sleep(0)
                    if core.closing:
                        return
                with core.lock:
                    taken = core.take_locked()
                if taken is None:
                    return
                lane, chunk = taken
                self._running[task] = core.leases_of(lane, chunk)
        finally:
            self._running.pop(task, None)
            self._start_lanes()

    async def _drive(self, work: Work) -> None:
        """Carry out a chunk's steps: the awaitables of the handler's calls, and the failure
        path's waits. A handler's error is thrown into the work (the failure policy takes
        it); the task's own cancellation closes it (what it had not finished is reported)."""
        send, throw, carry = work.send, work.throw, self._carry
        reply: Any = None
        error: BaseException | None = None
        while True:
            try:
                step = send(reply) if error is None else throw(error)
            except StopIteration:
                return
            error = None
            run = carry.get(type(step))
            try:
                reply = await (step if run is None else run(step))
            except BaseException as exc:
                if isinstance(exc, asyncio.CancelledError) and cancelling():
                    work.close()
                    raise
                error = exc

    # -- the steps, awaiting --------------------------------------------------------------

    async def _acks(self, step: Acks) -> None:
        """Not yielded on the loop (its emit awaits the acknowledgements); for completeness."""
        assert self._outputs is not None
        if step.futures:
            await asyncio.wait(
                [asyncio.wrap_future(f) for f in step.futures],
                timeout=self._outputs.produce_timeout,
            )

    async def _emit(self, step: Emit) -> BaseException | None:
        assert self._outputs is not None
        return await self._outputs.emit_async(step.msg, step.result, step.sends)

    async def _write(self, step: Write) -> BaseException | None:
        assert self._outputs is not None
        return await self._outputs.write_async(step.record, step.msg)

    async def _sleep(self, step: Sleep) -> bool:
        leases = step.leases
        return await self._clock.wait_async(
            lambda: self._revoked,
            lambda: any(lease.revoked for lease in leases),
            step.seconds,
            stall=step.stall,
        )

    async def _idle(self, step: Idle) -> None:
        if not step.seconds:
            await asyncio.sleep(0)
            return
        await self._clock.wait_async(lambda: self._never, step.until, step.seconds)

    def _flush_later(self) -> None:
        self._loop.call_later(REPORT_AFTER, self.core.flush_gathered)

    def _wake_waiters(self) -> None:
        self._revoked.set()
        self._revoked = asyncio.Event()

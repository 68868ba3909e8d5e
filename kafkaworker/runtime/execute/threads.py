"""WorkerPool: the thread driver of the executor core, for plain `def` handlers.

`concurrency` worker threads take ready lanes and run the core's work for them, carrying out
its steps blocking. One condition, built on the core's lock, is what workers wait on for
lanes, for a batch to fill, and for a backoff to end or be cut short by a revoke: one lock
acquisition both queues a batch and wakes a worker.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections import deque
from collections.abc import Sequence
from typing import Any

import structlog

from kafkaworker.producer import TRANSACTION_SCOPE, TransactionScope
from kafkaworker.runtime.execute.core import Driver, ExecutorCore, Lane, Work
from kafkaworker.runtime.execute.outputs import HeldOutputs, Outputs
from kafkaworker.runtime.execute.steps import Acks, Emit, Idle, Sleep, Write
from kafkaworker.runtime.handoff import Dispatched, Lease, Run

log = structlog.get_logger("kafkaworker.pool")


class WorkerPool(Driver):
    """`concurrency` worker threads draining one handler's lanes."""

    def __init__(self, core: ExecutorCore, *, name: str, outputs: Outputs | None = None) -> None:
        super().__init__(core, outputs)
        # At least once, a worker does not wait for each message's outputs to be acknowledged
        # before the next message of its lane: the core finishes messages as their
        # acknowledgements come (docs/architecture.md, Outputs). Waiting per message capped a
        # copy handler at `concurrency` messages per round trip (S8: 737-1,087 msg/s with 8
        # workers, against 13,938-20,403 for exactly_once, whose poll thread produces).
        core.defer_acks = (
            core.may_defer_acks and outputs is not None and not isinstance(outputs, HeldOutputs)
        )
        self._cond = threading.Condition(core.lock)
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
            for i in range(core.spec.concurrency)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    # -- the poll thread's side ---------------------------------------------------------------

    def submit(self, runs: list[Run]) -> None:
        with self._cond:
            woken = self.core.queue_locked(runs)
            if woken:
                self._cond.notify(woken)

    def revoke(self, leases: Sequence[Lease]) -> list[Dispatched]:
        with self._cond:
            dropped = self.core.revoke_locked(leases)
            self._cond.notify_all()  # waits on these leases end now
        return dropped

    def cancel(self, leases: Sequence[Lease]) -> None:
        """A thread cannot be cancelled: a call that outlives its revoke finishes and is
        reported as usual, and the poll thread ignores the report (the lease is gone by then,
        so nothing is committed for it)."""

    def close(self, timeout: float = 1.0) -> None:
        with self._cond:
            self.core.closing = True
            self._cond.notify_all()
        deadline = self._clock.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - self._clock.monotonic()))

    # -- worker threads -----------------------------------------------------------------------

    def _take(self) -> tuple[Lane, deque[Dispatched]] | None:
        core = self.core
        with self._cond:
            while not core.ready_locked():
                if core.closing:
                    return None
                self._cond.wait()
            return core.take_locked()

    def _release(self, lane: Lane) -> None:
        with self._cond:
            if self.core.release_locked(lane):
                # This worker takes the next ready lane itself; wake one more in case there
                # are several (new messages came while the lane was active).
                self._cond.notify()

    def _work(self) -> None:
        if self.core.spec.processing_guarantee == "exactly_once":
            TRANSACTION_SCOPE.set(
                TransactionScope(self.core.spec.name)
            )  # this thread's context only
        while (taken := self._take()) is not None:
            lane, chunk = taken
            try:
                self._drive(self.core.work(lane, chunk))
            except Exception:  # a bug of the runtime's own: what was left is reported
                log.exception("a worker failed", handler=self.core.spec.name)
            finally:
                if lane.exclusive:
                    self._release(lane)

    def _drive(self, work: Work) -> None:
        send, carry = work.send, self._carry
        reply: Any = None
        while True:
            try:
                step = send(reply)
            except StopIteration:
                return
            reply = carry[type(step)](step)

    # -- the steps, blocking --------------------------------------------------------------------

    def _emit(self, step: Emit) -> BaseException | None:
        outputs = self._outputs
        assert outputs is not None
        if not self.core.defer_acks:
            return outputs.emit(step.msg, step.result, step.sends)
        try:
            futures = outputs.produce(step.msg, step.result)
        except BaseException as exc:  # noqa: BLE001 - handed to the failure policy
            return exc
        step.msg.unacked = futures or None
        return None

    def _acks(self, step: Acks) -> None:
        assert self._outputs is not None
        concurrent.futures.wait(step.futures, self._outputs.produce_timeout)

    def _write(self, step: Write) -> BaseException | None:
        assert self._outputs is not None
        return self._outputs.write(step.record, step.msg)

    def _sleep(self, step: Sleep) -> bool:
        leases = step.leases
        with self._cond:
            return self._clock.wait(
                self._cond,
                lambda: any(lease.revoked for lease in leases),
                step.seconds,
                stall=step.stall,
            )

    def _idle(self, step: Idle) -> None:
        with self._cond:
            self._clock.wait(self._cond, step.until, step.seconds)

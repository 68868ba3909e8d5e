"""What the two executors share: a handler's lanes, its failure path, and how a chunk's
outcomes become completions. The worker pool (pool.py) runs it blocking on threads, the
async pool (aio.py) awaiting on the event loop."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import structlog

from kafkaworker.handlers import HandlerSpec
from kafkaworker.message import Message
from kafkaworker.observability.metrics import Metrics
from kafkaworker.runtime.clock import ManualClock
from kafkaworker.runtime.execute.attempts import Attempts
from kafkaworker.runtime.execute.batches import BatchRunner
from kafkaworker.runtime.execute.lanes import Lanes
from kafkaworker.runtime.execute.outputs import Outputs
from kafkaworker.runtime.execute.steps import Sleep
from kafkaworker.runtime.handoff import Completion, CompletionQueue, Outcome
from kafkaworker.runtime.poll.partitions import PartitionState

log = structlog.get_logger("kafkaworker.pool")

NOT_FINISHED, FINISHED = Outcome.NOT_FINISHED, Outcome.FINISHED
AWAITING_ACK = Outcome.AWAITING_ACK
# A chunk's finished work is reported at least this often, so that commits and backpressure
# follow slow handlers closely; after a call this slow, before every next message.
REPORT_EVERY = 0.05
SLOW_HANDLER = 0.001
# Calls between two clock readings once handlers are fast: a reading per message was a tenth
# of the per-message cost of a decode-only handler.
CLOCK_EVERY = 16
# Calls timed one by one, kept for the dashboard's p99 (the last minute's). The executors read
# the clock after every call only while handlers are slow (over SLOW_HANDLER): there a reading
# is free next to the call, while per-call readings of fast handlers were a tenth of their
# cost. A fast handler's p99 is then that of a sample (the first call of each chunk), below
# SLOW_HANDLER like the rest.
TIMED_CALLS = 4096


class LaneExecutor:
    def __init__(
        self,
        spec: HandlerSpec,
        attempts: Attempts,
        completions: CompletionQueue,
        *,
        metrics: Metrics | None = None,
        outputs: Outputs | None = None,
        batches: BatchRunner | None = None,
        virtual: ManualClock | None = None,
    ) -> None:
        self.spec = spec
        # Virtual time (the test client): a backoff advances this clock instead of waiting.
        self._virtual = virtual
        self._attempts = attempts
        self._completions = completions
        self._outputs = outputs
        self._batches = batches
        self._manual = spec.ack == "manual"
        metrics = metrics or Metrics()
        self._handler_seconds = metrics.handler_seconds.labels(spec.name)
        self._lanes = Lanes(spec.ordering, take_size=spec.batch.max_size if spec.batch else 1)
        # Mean handler time per message lately (whichever chunk reported last).
        self._recent_handler_seconds = 0.0
        # (when, seconds) of calls timed one by one; appended by the workers (deque.append
        # is atomic), copied whole by the reader.
        self._timed: deque[tuple[float, float]] = deque(maxlen=TIMED_CALLS)

    def handler_seconds_p99(self, window: float = 60.0) -> float | None:
        """The 99th percentile of the calls timed one by one in the last `window` seconds
        (retries and the failure path included: the time a message took); None when there
        were none."""
        since = time.monotonic() - window
        recent = sorted(seconds for when, seconds in self._timed.copy() if when >= since)
        if not recent:
            return None
        return recent[max(0, math.ceil(0.99 * len(recent)) - 1)]

    @property
    def recent_handler_seconds(self) -> float:
        batches = self._batches
        return batches.recent_handler_seconds if batches else self._recent_handler_seconds

    def _settle(
        self, msg: Message[Any], outcome: Outcome, run: list[int], put: Callable[[Completion], Any]
    ) -> None:
        """Account for a message's outcome: finished ones join `run` (reported together),
        the others are put at once, after what finished before them."""
        # A manual-ack message is reported exactly once: by msg.ack(), or here.
        if outcome is AWAITING_ACK:
            if not msg.acked:
                for observer in self._attempts.observers:
                    observer.awaiting_ack(msg)
            return
        if self._manual and not msg._claim():
            return
        if outcome is FINISHED:
            run.append(msg.offset)
            return
        if run:
            put(Completion(msg._state, run.copy(), FINISHED))
            run.clear()
        put(Completion(msg._state, [msg.offset], outcome))

    def _claimed(self, messages: list[Message[Any]]) -> list[Message[Any]]:
        """The messages this executor may still report as not finished: all of them, but for
        manual acks only those it claims. A manual-ack message may be in the user's hands
        (nacked after its handler returned, and queued again), and an ack() after it was given
        up would report it a second time: at shutdown the poll thread's count of messages in
        flight would then go below zero and it would wait out shutdown_timeout."""
        if not self._manual:
            return messages
        return [m for m in messages if m._claim()]

    def _not_finished(self, messages: Iterable[Message[Any]]) -> list[Completion]:
        """Completions giving `messages` up, one per partition (a batch of ordering="none"
        mixes partitions)."""
        by_state: dict[PartitionState, list[int]] = {}
        for msg in self._claimed(list(messages)):
            by_state.setdefault(msg._state, []).append(msg.offset)
        return [Completion(s, sorted(o), NOT_FINISHED) for s, o in by_state.items()]

    def _skipped_wait(self, sleep: Sleep) -> bool | None:
        """Under virtual time, a wait (but a stall's) only moves the clock: whether one of
        its partitions is revoked. None: wait for real."""
        if self._virtual is None or sleep.stall:
            return None
        self._virtual.advance(sleep.seconds)
        return any(s.revoked for s in sleep.partitions)

    def _runtime_bug(self, msg: Message[Any]) -> Outcome:
        """A bug of the runtime's own while running a message: it stays unfinished, never
        skipped. Called from an except block (the traceback is logged)."""
        log.exception(
            "failed to run the handler",
            handler=self.spec.name,
            topic=msg.topic,
            partition=msg.partition,
            offset=msg.offset,
        )
        return NOT_FINISHED

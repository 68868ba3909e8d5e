"""The worker pool: threads that take a ready lane and run the handler on its messages.

One lock (inside a Condition) guards the lanes and the ready queue. It is taken once per batch
by the poll thread and once per chunk by a worker: an exclusive lane is handed over whole (its
deque swapped for an empty one); the shared `none` lane, one message at a time.

Every message handed to the pool is reported back exactly once on the completion queue, as
finished or not (dropped before it started, or abandoned on revoke). That is what lets the poll
thread wait precisely for in-flight work on revoke and shutdown.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import structlog

from kafkaworker.errors import Skip
from kafkaworker.handlers import HandlerSpec
from kafkaworker.message import Message
from kafkaworker.runtime.lanes import Lane, LaneKey, lane_key_function
from kafkaworker.runtime.partitions import PartitionState
from kafkaworker.runtime.retry import is_fatal

log = structlog.get_logger("kafkaworker.pool")

# (partition state, offset, finished). Not finished: dropped unstarted, or abandoned on revoke.
Completion = tuple[PartitionState, int, bool]
CompletionQueue = queue.SimpleQueue[list[Completion]]

# A worker reports what it finished at least this often while it drains a long chunk, so that
# commits and backpressure follow slow handlers closely; after a handler call this slow it
# reports before every message.
_REPORT_EVERY = 0.05
_SLOW_HANDLER = 0.001


class WorkerPool:
    """`concurrency` threads draining lanes for one handler."""

    def __init__(self, spec: HandlerSpec, completions: CompletionQueue, *, name: str) -> None:
        self.spec = spec
        self._completions = completions
        self._lane_key = lane_key_function(spec.ordering)
        self._exclusive = spec.ordering != "none"
        self._cond = threading.Condition(threading.Lock())
        self._lanes: dict[LaneKey, Lane] = {}
        self._ready: deque[Lane] = deque()
        self._closing = False
        self._ack_lock = threading.Lock()  # manual acks: each message is reported once
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
            for i in range(spec.concurrency)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    # -- poll thread side -------------------------------------------------------------------

    def submit(self, messages: Iterable[Message[Any]]) -> None:
        """Queue messages on their lanes (called by the poll thread, once per batch)."""
        by_lane: dict[LaneKey, list[Message[Any]]] = {}
        key_of = self._lane_key
        for msg in messages:
            key = key_of(msg)
            bucket = by_lane.get(key)
            if bucket is None:
                by_lane[key] = [msg]
            else:
                bucket.append(msg)
        if not by_lane:
            return
        with self._cond:
            woken = 0
            for key, batch in by_lane.items():
                lane = self._lanes.get(key)
                if lane is None:
                    lane = self._lanes[key] = Lane(key, exclusive=self._exclusive)
                lane.queue.extend(batch)
                if not lane.scheduled and not lane.active:
                    lane.scheduled = True
                    self._ready.append(lane)
                    woken += 1
                if not self._exclusive:
                    woken += len(batch)  # the shared lane: one waiting thread per message
            if woken:
                self._cond.notify(woken)

    def drop(self, states: Iterable[PartitionState]) -> list[Message[Any]]:
        """Remove the queued, unstarted messages of these partitions and return them."""
        wanted = set(map(id, states))
        dropped: list[Message[Any]] = []
        with self._cond:
            for key, lane in list(self._lanes.items()):
                keep: deque[Message[Any]] = deque()
                for msg in lane.queue:
                    (dropped if id(msg._state) in wanted else keep).append(msg)
                lane.queue = keep
                if not keep and not lane.active:
                    if lane.scheduled:
                        self._ready.remove(lane)
                        lane.scheduled = False
                    del self._lanes[key]
        return dropped

    def close(self, timeout: float = 1.0) -> None:
        """Let idle threads exit. Threads still inside a handler are daemons and left alone."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    # -- worker threads ---------------------------------------------------------------------

    def _take(self) -> tuple[Lane, deque[Message[Any]]] | None:
        with self._cond:
            while not self._ready:
                if self._closing:
                    return None
                self._cond.wait()
            lane = self._ready[0]
            if lane.exclusive:
                self._ready.popleft()
                lane.scheduled = False
                lane.active = True
                chunk, lane.queue = lane.queue, deque()
                return lane, chunk
            # The shared lane: one message at a time. A larger slice would run its messages
            # one after another in one thread, so a slow one would hold up the rest while
            # other threads sit idle (head-of-line blocking, fatal for IO-bound handlers).
            chunk = deque((lane.queue.popleft(),))
            if not lane.queue:
                self._ready.popleft()
                lane.scheduled = False
            return lane, chunk

    def _release(self, lane: Lane) -> None:
        with self._cond:
            lane.active = False
            if lane.queue:
                if not lane.scheduled:
                    lane.scheduled = True
                    self._ready.append(lane)
                    # This thread takes the next ready lane itself; wake one more in case
                    # there are several (new messages came while the lane was active).
                    self._cond.notify()
            elif self._lanes.get(lane.key) is lane:
                # Forget empty lanes: with ordering="key" there is one per key ever seen.
                del self._lanes[lane.key]

    def _work(self) -> None:
        while (taken := self._take()) is not None:
            lane, chunk = taken
            try:
                self._run_chunk(chunk)
            finally:
                if lane.exclusive:
                    self._release(lane)

    def _run_chunk(self, chunk: deque[Message[Any]]) -> None:
        report: list[Completion] = []
        reported_at = time.monotonic()

        def flush() -> None:
            nonlocal report, reported_at
            if report:
                self._completions.put(report)
                report = []
            reported_at = time.monotonic()

        manual = self.spec.ack == "manual"
        slow = False
        while chunk:
            msg = chunk.popleft()
            state = msg._state
            if state.revoked:
                report.append((state, msg.offset, False))
                continue
            # What is finished must not wait behind a handler that may take long: report it
            # first when handlers are slow (then one report per message costs nothing), or
            # once it is older than the reporting interval.
            if report and (slow or time.monotonic() - reported_at >= _REPORT_EVERY):
                flush()
            started = time.monotonic()
            try:
                finished = self._execute(msg, state, before_backoff=flush)
            except BaseException:
                # A bug of the runtime's own: the message stays unfinished, never skipped.
                log.exception("failed to run the handler", **_where(self.spec, msg))
                finished = False
            slow = time.monotonic() - started >= _SLOW_HANDLER
            if manual:
                # Reported exactly once: by msg.ack(), or here if it can no longer be acked.
                if not finished and self._claim(msg):
                    report.append((state, msg.offset, False))
                continue
            report.append((state, msg.offset, finished))
        flush()

    def _claim(self, msg: Message[Any]) -> bool:
        """Take the right to report a manual-ack message; False if it was reported already."""
        with self._ack_lock:
            if msg._acked:
                return False
            msg._acked = True
            return True

    def _execute(
        self, msg: Message[Any], state: PartitionState, *, before_backoff: Callable[[], None]
    ) -> bool:
        """Run the handler until it succeeds; False if the partition was revoked meanwhile.

        Up to `retries` re-attempts with backoff; after that (and at once for fatal errors)
        the message is retried at the maximum backoff for as long as it takes: its partition
        stalls visibly instead of losing the message, and its offset is never committed past.
        """
        spec = self.spec
        manual = spec.ack == "manual"
        if manual:
            completions, claim = self._completions, self._claim

            def ack() -> None:
                if claim(msg):
                    completions.put([(state, msg.offset, True)])

            msg._ack = ack
        retry = 0
        while True:
            try:
                spec.func(msg)
                return True
            except Skip as exc:
                log.info("message skipped", reason=str(exc), **_where(spec, msg))
                if manual:
                    msg.ack()
                return True
            # Any handler error, even a BaseException such as SystemExit: retried, then
            # stalled, never lost. (Signals reach the main thread only, never a handler.)
            except BaseException as exc:
                if manual and msg._acked:
                    return True  # acknowledged before it raised: finished as far as Kafka goes
                if state.revoked:
                    return False
                retry += 1
                fatal = is_fatal(exc)
                exhausted = fatal or retry > spec.retries
                delay = spec.backoff.max if exhausted and retry > 1 else spec.backoff.delay(retry)
                log.error(
                    "handler failed",
                    error=f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}",
                    retry_in=round(delay, 3),
                    stalled=exhausted,
                    exc_info=exc if retry == 1 else None,
                    **_where(spec, msg),
                )
                before_backoff()  # what this thread finished must not wait out the backoff
                if state.revoked_event.wait(delay):
                    return False
                msg.attempt += 1


def _where(spec: HandlerSpec, msg: Message[Any]) -> dict[str, Any]:
    return {
        "handler": spec.name,
        "topic": msg.topic,
        "partition": msg.partition,
        "offset": msg.offset,
        "attempt": msg.attempt,
    }

"""The worker pool: threads that take a ready lane and run the handler on its messages.

One lock (inside a Condition) guards the lanes and the ready queue. It is taken once per batch
by the poll thread and once per chunk by a worker: an exclusive lane is handed over whole (its
deque swapped for an empty one); the shared `none` lane, one message at a time.

Every message handed to the pool is reported back exactly once on the completion queue, as
finished or not (dropped before it started, or abandoned on revoke). That is what lets the poll
thread wait precisely for in-flight work on revoke and shutdown.
"""

from __future__ import annotations

import functools
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import structlog

from kafkaworker.errors import BatchFailures, Skip
from kafkaworker.handlers import HandlerSpec
from kafkaworker.message import Message
from kafkaworker.observability.metrics import Metrics
from kafkaworker.producer import Producer
from kafkaworker.runtime.breaker import CircuitBreaker
from kafkaworker.runtime.deadletter import FailurePublisher, error_type
from kafkaworker.runtime.lanes import Lane, LaneKey, Run, by_lane
from kafkaworker.runtime.partitions import PartitionState
from kafkaworker.runtime.retry import is_fatal
from kafkaworker.runtime.retrytopics import RetryRoutes
from kafkaworker.serialization import Codec, get_codec

log = structlog.get_logger("kafkaworker.pool")

# Outcomes reported back to the poll thread. Not finished: dropped unstarted, or abandoned
# on revoke; its offset is never committed past. (AWAITING_ACK is never reported: msg.ack()
# reports the message itself.)
NOT_FINISHED, FINISHED, DEAD_LETTERED, AWAITING_ACK = 0, 1, 2, 3
# (partition state, offsets, outcome): offsets of one partition with one outcome, ascending.
Completion = tuple[PartitionState, list[int], int]
CompletionQueue = queue.SimpleQueue[list[Completion]]

# A worker reports what it finished at least this often while it drains a long chunk, so that
# commits and backpressure follow slow handlers closely; after a handler call this slow it
# reports before every message.
_REPORT_EVERY = 0.05
_SLOW_HANDLER = 0.001


class WorkerPool:
    """`concurrency` threads draining lanes for one handler."""

    def __init__(
        self,
        spec: HandlerSpec,
        completions: CompletionQueue,
        *,
        name: str,
        failures: FailurePublisher | None = None,
        routes: RetryRoutes | None = None,
        breaker: CircuitBreaker | None = None,
        metrics: Metrics | None = None,
        producer: Producer | None = None,
        produce_timeout: float = 30.0,
        runtime_codecs: Mapping[str, Codec] | None = None,
    ) -> None:
        if spec.output is not None and producer is None:
            raise ValueError(f"handler {spec.name!r} has an output but no producer was given")
        self.spec = spec
        self._call = spec.call()
        self._producer = producer
        self._produce_timeout = produce_timeout
        self._output_codec: Codec | None = None
        if spec.output is not None:
            codec = spec.codec
            runtime = runtime_codecs or {}
            self._output_codec = (
                runtime[codec] if isinstance(codec, str) and codec in runtime else get_codec(codec)
            )
        self._failures = failures
        self._routes = routes
        self._breaker = breaker
        self._metrics = metrics or Metrics()
        self._handler_seconds = self._metrics.handler_seconds.labels(spec.name)
        self._completions = completions
        self._exclusive = spec.ordering != "none"
        self._cond = threading.Condition(threading.Lock())
        self._lanes: dict[LaneKey, Lane] = {}
        self._ready: deque[Lane] = deque()
        self._closing = False
        self._ack_lock = threading.Lock()  # manual acks: each message is reported once
        # Mean handler time per message over a worker's latest report (whichever wrote last):
        # the poll thread's backpressure treats slow handlers differently from fast ones.
        self.recent_handler_seconds = 0.0
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
            for i in range(spec.concurrency)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    # -- poll thread side -------------------------------------------------------------------

    def submit(self, runs: list[Run]) -> None:
        """Queue runs of messages (each of one partition, in fetch order) on their lanes;
        called by the poll thread, once per batch."""
        if not runs:
            return
        with self._cond:
            woken = 0
            for key, batch in by_lane(self.spec.ordering, runs):
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
            take = self.spec.batch.max_size if self.spec.batch else 1
            chunk = deque(lane.queue.popleft() for _ in range(min(take, len(lane.queue))))
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
                if self.spec.batch is not None:
                    self._run_batches(lane, chunk)
                else:
                    self._run_chunk(chunk)
            finally:
                if lane.exclusive:
                    self._release(lane)

    def _run_chunk(self, chunk: deque[Message[Any]]) -> None:
        report: list[Completion] = []
        # Offsets finished one after another in one partition: reported as one completion,
        # which the poll thread's tracker passes over in one step when they are in order.
        run: list[int] = []
        run_state: PartitionState | None = None
        now = reported_at = time.monotonic()
        busy = 0.0  # handler time not yet counted in the metric: it is added per report
        calls = 0  # handler calls in `busy`

        def close_run() -> None:
            nonlocal run
            if run:
                report.append((run_state, run, FINISHED))  # type: ignore[arg-type]
                run = []

        def flush() -> None:
            nonlocal report, reported_at, busy, calls
            close_run()
            if report:
                self._completions.put(report)
                report = []
            if calls:
                self.recent_handler_seconds = busy / calls
                self._handler_seconds.inc(busy)
                busy = 0.0
                calls = 0
            reported_at = time.monotonic()

        manual = self.spec.ack == "manual"
        # The common case (auto ack, no output) calls the handler inline; the failure policy
        # in _execute takes over only once it raises.
        plain = not manual and self.spec.output is None
        call = self._call
        clock = time.monotonic
        slow = False
        while chunk:
            # Popped, not iterated: a handled message is freed at once, not with the chunk.
            msg = chunk.popleft()
            state = msg._state
            if state is not run_state:
                close_run()
                run_state = state
            if state.revoked:
                report.append((state, [msg.offset], NOT_FINISHED))
                continue
            # What is finished must not wait behind a handler that may take long: report it
            # first when handlers are slow (then one report per message costs nothing), or
            # once it is older than the reporting interval.
            if (run or report) and (slow or now - reported_at >= _REPORT_EVERY):
                flush()
                now = reported_at
            started = now  # one clock reading per message: it ends one call, starts the next
            try:
                if plain:
                    try:
                        call(msg)
                        outcome = FINISHED
                    except BaseException as exc:  # noqa: BLE001 - the failure policy decides
                        outcome = self._execute(msg, state, before_backoff=flush, failed=exc)
                else:
                    outcome = self._execute(msg, state, before_backoff=flush)
            except BaseException:
                # A bug of the runtime's own: the message stays unfinished, never skipped.
                log.exception("failed to run the handler", **_where(self.spec, msg))
                outcome = NOT_FINISHED
            now = clock()
            elapsed = now - started
            busy += elapsed
            calls += 1
            slow = elapsed >= _SLOW_HANDLER
            if outcome == AWAITING_ACK:
                continue
            # A manual-ack message is reported exactly once: by msg.ack(), or here.
            if manual and not self._claim(msg):
                continue
            if outcome == FINISHED:
                run.append(msg.offset)
                continue
            close_run()
            report.append((state, [msg.offset], outcome))
        flush()

    def _run_batches(self, lane: Lane, chunk: deque[Message[Any]]) -> None:
        """Batch handlers: fill a batch from the lane (this worker owns an exclusive lane, so
        new messages of it queue up for it) for at most max_wait, then run it."""
        policy = self.spec.batch
        assert policy is not None
        deadline = time.monotonic() + policy.max_wait
        while lane.exclusive and len(chunk) < policy.max_size:
            with self._cond:
                if lane.queue:
                    chunk.extend(lane.queue)
                    lane.queue = deque()
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closing or chunk[0]._state.revoked:
                    break
                self._cond.wait(min(remaining, 0.01))
        while chunk:
            batch = [chunk.popleft() for _ in range(min(policy.max_size, len(chunk)))]
            report: list[Completion] = [
                (m._state, [m.offset], NOT_FINISHED) for m in batch if m._state.revoked
            ]
            live = [m for m in batch if not m._state.revoked]
            if live:
                started = time.monotonic()
                try:
                    outcomes = self._execute_batch(live)
                except BaseException:
                    log.exception("failed to run the batch handler", handler=self.spec.name)
                    outcomes = [NOT_FINISHED] * len(live)
                elapsed = time.monotonic() - started
                self._handler_seconds.inc(elapsed)
                self.recent_handler_seconds = elapsed / len(live)
                report += [(m._state, [m.offset], o) for m, o in zip(live, outcomes, strict=True)]
            self._completions.put(report)

    def _execute_batch(self, batch: list[Message[Any]]) -> list[int]:
        """Run a batch handler; an outcome per message of `batch`, in order.

        The whole batch is retried with backoff. With BatchFailures only the named messages
        are. A fatal error (one undecodable record, say) on a batch of several runs them one
        at a time, so only the bad one goes to the DLQ. Spent failures then go the
        single-message way (retry topics, the DLQ, skip), or stall as one batch.
        """
        spec = self.spec
        outcome: dict[int, int] = {}
        remaining = batch
        retry = 0
        while remaining:
            # Only messages of a revoked partition are given up (with ordering="none" a batch
            # mixes partitions): the next owner gets them.
            for msg in remaining:
                if msg._state.revoked:
                    outcome[id(msg)] = NOT_FINISHED
            remaining = [m for m in remaining if id(m) not in outcome]
            if not remaining:
                break
            errors = self._call_batch(remaining)
            for msg in remaining:
                if msg not in errors:
                    outcome[id(msg)] = FINISHED
            remaining = [m for m in remaining if m in errors]
            if not remaining:
                break
            self._metrics.handler_failures.labels(spec.name).inc(len(remaining))
            fatal = {
                id(m): is_fatal(e) or not isinstance(e, spec.retry_on) for m, e in errors.items()
            }
            if len(remaining) > 1 and all(fatal[id(m)] for m in remaining):
                for msg in remaining:  # find the bad ones: one message at a time
                    outcome[id(msg)] = self._execute_batch([msg])[0]
                break
            retry += 1
            first = errors[remaining[0]]
            if any(fatal[id(m)] for m in remaining) or retry > spec.retries:
                if self._has_destination(remaining) or spec.on_exhausted == "skip":
                    for msg in remaining:
                        settled = self._exhausted(
                            msg,
                            msg._state,
                            errors[msg],
                            fatal=fatal[id(msg)],
                            before_backoff=lambda: None,
                        )
                        if settled is not None:
                            outcome[id(msg)] = settled
                    remaining = [m for m in remaining if id(m) not in outcome]
                    for msg in remaining:
                        msg.attempt += 1
                    continue
                delay = spec.backoff.max  # nowhere to send them: the batch stalls, as one
            else:
                delay = spec.backoff.delay(retry)
            log.warning(
                "batch handler failed; retrying",
                failed=len(remaining),
                stalled=delay == spec.backoff.max and retry > spec.retries,
                error=f"{error_type(first)}: {first}",
                retry_in=round(delay, 3),
                handler=spec.name,
            )
            if remaining[0]._state.revoked_event.wait(delay):
                continue  # the revoked check at the top settles them
            for msg in remaining:
                msg.attempt += 1
        return [outcome.get(id(m), NOT_FINISHED) for m in batch]

    def _call_batch(self, batch: list[Message[Any]]) -> dict[Message[Any], BaseException]:
        """Call the batch handler; the messages that failed, with their errors."""
        try:
            self.spec.func(list(batch))  # a copy: the handler may change its list
        except Skip as exc:
            log.info("batch skipped", reason=str(exc), handler=self.spec.name, size=len(batch))
            self._metrics.skipped.labels(self.spec.name).inc(len(batch))
            return {}
        except BatchFailures as exc:
            members = set(batch)
            unknown = [key for key in exc.failures if key not in members]
            if unknown or not exc.failures:
                # Keys that are not this batch's messages cannot say which ones failed:
                # count every message as failed rather than finish a failed one.
                log.error(
                    "BatchFailures must map messages of the batch to errors; "
                    "treating the whole batch as failed",
                    handler=self.spec.name,
                    unknown_keys=len(unknown),
                )
                return dict.fromkeys(batch, exc)
            return dict(exc.failures)
        except BaseException as exc:  # noqa: BLE001 - the failure policy decides
            return dict.fromkeys(batch, exc)
        return {}

    def _has_destination(self, messages: list[Message[Any]]) -> bool:
        """Whether failed messages have somewhere to go: a next retry topic, or the DLQ."""
        if self._failures is None:
            return False
        if self.spec.dlq is not None:
            return True
        routes = self._routes
        return routes is not None and all(routes.next_stage(m.topic) for m in messages)

    def _claim(self, msg: Message[Any]) -> bool:
        """Take the right to report a manual-ack message; False if it was reported already."""
        with self._ack_lock:
            if msg._acked:
                return False
            msg._acked = True
            return True

    def _execute(
        self,
        msg: Message[Any],
        state: PartitionState,
        *,
        before_backoff: Callable[[], None],
        failed: BaseException | None = None,
    ) -> int:
        """Run the handler under the failure policy; return the message's outcome.

        Up to `retries` re-attempts with backoff, for errors in `retry_on`; other errors, and
        fatal ones (undecodable payloads, validation errors, DeadLetter), skip the retries.
        Once retries are spent: the DLQ when there is one, else on_exhausted ("stall": retry
        at the maximum backoff for as long as it takes; "skip": log and move on).
        `failed`: the error of a first attempt already made by the caller.
        """
        spec = self.spec
        manual = spec.ack == "manual"
        if manual:
            completions, claim = self._completions, self._claim

            def ack() -> None:
                if claim(msg):
                    completions.put([(state, [msg.offset], FINISHED)])

            msg._ack = ack
        retry = 0
        while True:
            try:
                if failed is not None:
                    error, failed = failed, None
                    raise error
                result = self._call(msg)
                if spec.output is not None:
                    self._emit(msg, result)
                return AWAITING_ACK if manual else FINISHED
            except Skip as exc:
                self._metrics.skipped.labels(spec.name).inc()
                log.info("message skipped", reason=str(exc), **_where(spec, msg))
                if manual:
                    msg.ack()
                    return AWAITING_ACK
                return FINISHED
            # Any handler error, even a BaseException such as SystemExit, goes through the
            # policy. (Signals reach the main thread only, never a handler.)
            except BaseException as exc:
                if manual and msg._acked:
                    return AWAITING_ACK  # acknowledged before it raised: finished for Kafka
                if state.revoked:
                    return NOT_FINISHED
                self._metrics.handler_failures.labels(spec.name).inc()
                retry += 1
                fatal = is_fatal(exc) or not isinstance(exc, spec.retry_on)
                if not fatal and retry <= spec.retries:
                    delay = spec.backoff.delay(retry)
                    log.warning(
                        "handler failed; retrying",
                        error=f"{error_type(exc)}: {exc}",
                        retry_in=round(delay, 3),
                        exc_info=exc if retry == 1 else None,
                        **_where(spec, msg),
                    )
                    before_backoff()  # what this thread finished must not wait out the backoff
                    if state.revoked_event.wait(delay):
                        return NOT_FINISHED
                    msg.attempt += 1
                    continue
                outcome = self._exhausted(
                    msg, state, exc, fatal=fatal, before_backoff=before_backoff
                )
                if outcome is not None:
                    return outcome
                msg.attempt += 1  # run the handler again: stalled, or the breaker closed

    def _emit(self, msg: Message[Any], result: Any) -> None:
        """Produce the handler's output(s) with the input's key and wait for every ack: the
        input is finished only then (at-least-once end to end). Raises like a handler."""
        assert self._producer is not None and self.spec.output is not None
        if result is None:
            return
        items = list(result) if isinstance(result, list | tuple | Iterator) else [result]
        futures = [
            self._producer.send(
                self.spec.output,
                item,
                key=msg.key,
                codec=self._output_codec,
                timeout=self._produce_timeout,
            )
            for item in items
        ]
        for future in futures:
            future.result(self._produce_timeout)

    def _exhausted(
        self,
        msg: Message[Any],
        state: PartitionState,
        error: BaseException,
        *,
        fatal: bool,
        before_backoff: Callable[[], None],
    ) -> int | None:
        """Retries are spent (or the error is fatal): the outcome, or None to run again."""
        spec = self.spec
        where = _where(spec, msg)
        described = f"{error_type(error)}: {error}"
        before_backoff()
        breaker = self._breaker
        if breaker is not None and breaker.open:
            # Most messages are failing (a bad deploy?): hold this one rather than fill the
            # DLQ, and run the handler again once the breaker closes.
            log.warning("circuit breaker open: holding the message", error=described, **where)
            while breaker.open:
                if state.revoked_event.wait(0.2):
                    return NOT_FINISHED
            return None
        publisher = self._failures
        stage = self._routes.next_stage(msg.topic) if self._routes and not fatal else None
        if publisher is not None and (stage is not None or spec.dlq is not None):
            if stage is not None:  # a delayed retry topic comes first, the DLQ after the last
                destination, outcome = stage.topic, FINISHED
                write = functools.partial(publisher.publish_retry, msg, error, stage)
            else:
                assert spec.dlq is not None
                destination, outcome = spec.dlq, DEAD_LETTERED
                write = functools.partial(publisher.publish, msg, error)
            return self._write(
                write,
                destination=destination,
                msg=msg,
                state=state,
                error=error,
                outcome=outcome,
                before_backoff=before_backoff,
            )
        if spec.on_exhausted == "skip":
            self._metrics.skipped.labels(spec.name).inc()
            log.error(
                "retries exhausted; skipping the message (on_exhausted=skip)",
                error=described,
                fatal=fatal,
                exc_info=error,
                **where,
            )
            return FINISHED
        log.error(
            "retries exhausted and no dead-letter topic: retrying at the maximum backoff; "
            "the partition is stalled until the handler succeeds",
            error=described,
            fatal=fatal,
            retry_in=spec.backoff.max,
            exc_info=error if msg.attempt == spec.retries + 1 else None,
            **where,
        )
        stalled = self._metrics.stalled.labels(spec.name)
        stalled.inc()
        try:
            revoked = state.revoked_event.wait(spec.backoff.max)
        finally:
            stalled.dec()
        return NOT_FINISHED if revoked else None

    def _write(
        self,
        write: Callable[[], None],
        *,
        destination: str,
        msg: Message[Any],
        state: PartitionState,
        error: BaseException,
        outcome: int,
        before_backoff: Callable[[], None],
    ) -> int:
        """Write to a retry topic or the DLQ until the broker acknowledges it; only then is
        the message finished. Meanwhile its partition waits: nothing is committed past it."""
        spec, where = self.spec, _where(self.spec, msg)
        failures = 0
        while True:
            try:
                write()
            except Exception as exc:  # noqa: BLE001 - every failure is retried the same way
                failures += 1
                self._metrics.dead_letter_write_failures.labels(spec.name).inc()
                delay = max(0.05, spec.backoff.delay(failures))
                log.error(
                    "cannot write the failed message; the partition waits until it can",
                    destination=destination,
                    reason=str(exc),
                    retry_in=round(delay, 3),
                    **where,
                )
                before_backoff()
                if state.revoked_event.wait(delay):
                    return NOT_FINISHED
                continue
            described = f"{error_type(error)}: {error}"
            if outcome == DEAD_LETTERED:
                self._metrics.dead_lettered.labels(spec.name).inc()
                log.warning(
                    "message sent to the dead-letter topic",
                    dlq=destination,
                    error=described,
                    **where,
                )
            else:
                self._metrics.retried_later.labels(spec.name).inc()
                log.info(
                    "message sent to a delayed retry topic",
                    retry_topic=destination,
                    error=described,
                    **where,
                )
            return outcome


def _where(spec: HandlerSpec, msg: Message[Any]) -> dict[str, Any]:
    return {
        "handler": spec.name,
        "topic": msg.topic,
        "partition": msg.partition,
        "offset": msg.offset,
        "attempt": msg.attempt,
    }

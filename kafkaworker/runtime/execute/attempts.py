"""Attempts: one message through the failure policy, as steps an executor carries out.

The handler runs; when it raises, the policy decides (failures/policy.py) and this module
carries the decision out as steps (steps.py): wait and run again, hold while the breaker is
open, write to a retry topic or the DLQ until the broker acknowledges it, release or reject
it (queue mode), or skip it. It does no I/O and never waits itself, so the failure path is
written once for worker threads and the event loop. Every wait ends the moment the message's
partition is revoked, and the message is then given up (not finished).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Generator
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from kafkaworker.errors import Skip
from kafkaworker.handlers import HandlerSpec
from kafkaworker.message import Message
from kafkaworker.observability.metrics import Metrics
from kafkaworker.producer import TRANSACTION_SCOPE, HeldSend
from kafkaworker.runtime.execute.outputs import FailureRecords, error_type
from kafkaworker.runtime.execute.steps import Emit, Sleep, Write
from kafkaworker.runtime.failures.policy import Action, Decision, FailurePolicy
from kafkaworker.runtime.handoff import Completion, Dispatched, Lease, Outcome, Run

if TYPE_CHECKING:
    from kafkaworker.tracing.spans import ProcessSpans

log = structlog.get_logger("kafkaworker.pool")

NOT_FINISHED, FINISHED = Outcome.NOT_FINISHED, Outcome.FINISHED
DEAD_LETTERED, AWAITING_ACK = Outcome.DEAD_LETTERED, Outcome.AWAITING_ACK
RELEASED, REJECTED = Outcome.RELEASED, Outcome.REJECTED
# While the breaker is open a held message checks this often whether it closed.
_HOLD_CHECK = 0.2

# Yields steps (and, for an async handler, the awaitable of each call); returns the outcome
# and the seconds spent in handler calls (the waits between them are not handler time).
Steps = Generator[Any, Any, tuple[Outcome, float]]


class Attempts:
    """A handler's messages under its failure policy; shared by its executor's workers.
    `report` puts completions where the poll thread takes them (the executor's)."""

    def __init__(
        self,
        spec: HandlerSpec,
        policy: FailurePolicy,
        *,
        metrics: Metrics,
        records: FailureRecords | None = None,
    ) -> None:
        self.spec = spec
        self.policy = policy
        self.call = spec.call()
        # An async def handler's call returns an awaitable, which is yielded to the loop.
        self.awaiting = spec.is_async
        self._records = records
        self._emits = spec.output is not None  # the handler's return value is produced
        # exactly_once: app.producer's sends during a call are collected (producer.py,
        # TransactionScope) and held with the call's outputs.
        self._exactly_once = spec.processing_guarantee == "exactly_once"
        # Set by the executor: how completions are reported (a manual ack reports itself), and
        # how a message nacked after its handler returned goes back to the executor.
        self.report: Callable[[list[Completion]], None] | None = None
        self.resubmit: Callable[[list[Run]], None] | None = None
        # Told of every failure and what was decided (the test client, the dashboard).
        self.observers: list[AttemptObserver] = []
        # The dashboard's recent-failures buffer. Not an observer: observers are also told of
        # every report, and this needs failures only, so successes pay nothing for it.
        self.failure_sink: Callable[[Message[Any], BaseException, Decision], None] | None = None
        # With tracing on: each failure is an event of the current process span (set by the
        # composition root, like the sink: the failure path only).
        self.spans: ProcessSpans | None = None
        self._manual = spec.ack == "manual"
        self._queue = spec.mode == "queue"
        name = spec.name
        self._handler_failures = metrics.handler_failures.labels(name)
        self._skipped = metrics.skipped.labels(name)
        self._stalled = metrics.stalled.labels(name)
        self._dead_lettered = metrics.dead_lettered.labels(name)
        self._retried_later = metrics.retried_later.labels(name)
        self._write_failures = metrics.dead_letter_write_failures.labels(name)

    def calling(self, func: Callable[[Any], Any], arg: Any) -> Generator[Any, Any, Any]:
        """Call `func(arg)`: inline for a def handler, yielding its awaitable for an async def
        one, whose result is sent back (or its error thrown in). Its error propagates."""
        result = func(arg)
        if self.awaiting:
            result = yield result
        return result

    def steps(
        self,
        msg: Dispatched,
        failed: BaseException | None = None,
        *,
        before_wait: Callable[[], None] | None = None,
    ) -> Steps:
        """Run the handler until the message is finished, dead-lettered, awaiting its ack,
        released or rejected (queue mode), or given up. `failed`: the error of a first call
        the executor made already. `before_wait`: called before the failure path may wait
        (a backoff, a DLQ write), so that the executor reports what it finished before."""
        lease = msg.lease
        manual = self._manual
        # The worker thread's or task's scope (set by the executors); None at least once.
        scope = TRANSACTION_SCOPE.get() if self._exactly_once else None
        sends: list[HeldSend] | None = None
        failures = 0
        seconds = 0.0  # in handler calls
        nacks: list[BaseException] = []  # nacks during the handler call
        # A nack after an earlier call had returned, or an output of an earlier call that the
        # broker refused after the executor ran on (core.py, `pending`): the failure path
        # takes it up with the failures so far, so that retries count across them.
        resumed = msg.take_nack()
        if resumed is not None:
            failed, failures = resumed
        if manual:
            calls = self._manual_callbacks(msg, lease, nacks, lambda: failures)
        while True:
            error = failed
            failed = None
            if error is None:
                if manual:
                    calls.calling = True
                started = time.monotonic()
                if scope is not None:
                    scope.sends = []
                try:
                    result = yield from self.calling(self.call, msg)
                except GeneratorExit:
                    raise
                except BaseException as exc:  # noqa: BLE001 - the failure policy decides
                    error = exc
                finally:
                    if scope is not None:
                        # A failed call's sends are dropped: its retry sends them again.
                        sends, scope.sends = scope.sends, None
                seconds += time.monotonic() - started
                if manual and error is None:
                    with calls.lock:  # nacked during the call: no outputs for it
                        error = nacks[0] if nacks else None
                if error is None and (self._emits or sends):
                    error = yield Emit(msg, result, sends)
                if manual:
                    with calls.lock:
                        calls.calling = False
                        if error is None and nacks:
                            error = nacks[0]  # nacked while its outputs were written
                        # One failure per call, however often it was nacked: a nack left
                        # over would fail the next call, which may well succeed.
                        nacks.clear()
                        calls.returned = error is None
                if error is None:
                    return (AWAITING_ACK if manual else FINISHED), seconds
            if manual and msg.acked:
                return AWAITING_ACK, seconds  # acknowledged before it raised: finished
            if not isinstance(error, Skip):
                if lease.revoked:
                    return NOT_FINISHED, seconds
                failures += 1
                self._handler_failures.inc()
            if self._queue:
                decision = self.policy.decide_delivery(msg.topic, error, msg.attempt)
            else:
                decision = self.policy.decide(msg.topic, error, failures)
            self.observe(msg, error, decision)
            if before_wait is not None:
                before_wait()
            if decision.final:
                return (yield from self.settle(msg, error, decision)), seconds
            self._log_wait(msg, error, decision, first=failures == 1)
            if (yield from self.wait(decision, (lease,))):
                return NOT_FINISHED, seconds
            msg.attempt += 1

    def observe(self, msg: Message[Any], error: BaseException, decision: Decision) -> None:
        if self.spans is not None:
            self.spans.failed(
                error,
                error_type(error),
                attempt=msg.attempt,
                decision=decision.action.value,
                # Settled by a failure: not a Skip the handler raised on purpose.
                final=decision.final and not isinstance(error, Skip),
            )
        if self.failure_sink is not None:
            self.failure_sink(msg, error, decision)
        for observer in self.observers:
            observer.failed(msg, error, decision)

    def reported(self, completions: list[Completion]) -> None:
        """Tell the observers what was just put on the completion queue. The executors call
        it only when there are observers: nothing per message otherwise."""
        for observer in self.observers:
            observer.reported(completions)

    def _manual_callbacks(
        self,
        msg: Dispatched,
        lease: Lease,
        nacks: list[BaseException],
        failures: Callable[[], int],
    ) -> _ManualCalls:
        """Bind msg.ack() and msg.nack() for a manual-ack message. An ack reports it finished
        (once, whoever claims it first). A nack during the handler call fails that call; a
        nack after it returned holds the error on the message and hands the message back to
        the executor, whose next run of it takes the failure path. Any other nack is ignored:
        the message is on the failure path already (a backoff, a DLQ write) or was handed
        back by an earlier nack, and handing it back again would run it twice."""
        calls = _ManualCalls()

        def nack(error: BaseException) -> None:
            with calls.lock:
                if calls.calling:
                    nacks.append(error)
                    return
                if not calls.returned:
                    log.debug(
                        "nack ignored: the message is being retried already",
                        **_where(self.spec, msg),
                    )
                    return
                calls.returned = False
            msg.hold_nack(error, failures())
            assert self.resubmit is not None
            self.resubmit([(lease, [msg])])

        def ack() -> None:
            assert self.report is not None
            self.report([Completion(lease, [msg.offset], FINISHED)])

        msg.bind_acks(ack, nack)
        return calls

    def wait(self, decision: Decision, leases: Collection[Lease]) -> Generator[Sleep, bool, bool]:
        """Wait as a RETRY, STALL or HOLD decision says; True when a lease was revoked
        meanwhile (the message is then given up)."""
        if decision.action is Action.HOLD:
            breaker = self.policy.breaker
            while breaker is not None and breaker.open:
                if (yield Sleep(_HOLD_CHECK, leases)):
                    return True
            return False
        if decision.action is Action.STALL:
            self._stalled.inc()
            try:
                revoked: bool = yield Sleep(decision.delay, leases, stall=True)
            finally:
                self._stalled.dec()
            return revoked
        revoked = yield Sleep(decision.delay, leases)
        return revoked

    def settle(
        self, msg: Dispatched, error: BaseException, decision: Decision
    ) -> Generator[Write | Sleep, Any, Outcome]:
        """Carry out a final decision: skip, release, reject, or write to a retry topic or the
        DLQ until the broker acknowledges it (only then is the message finished; meanwhile
        its partition waits, nothing is committed past it). The message's outcome."""
        where = _where(self.spec, msg)
        action = decision.action
        if action is Action.RELEASE:
            if decision.delay:
                log.warning(
                    "the Schema Registry did not answer; releasing the record after a backoff",
                    error=_described(error),
                    retry_in=round(decision.delay, 3),
                    **where,
                )
                if (yield Sleep(decision.delay, (msg.lease,))):
                    return NOT_FINISHED
            else:
                log.warning(
                    "handler failed; releasing the record to the share group for redelivery",
                    error=_described(error),
                    exc_info=error if msg.attempt == 1 else None,
                    **where,
                )
            return RELEASED
        if action is Action.REJECT:
            self._skipped.inc()
            log.error(
                "retries exhausted and no dead-letter topic: rejecting the record (the share "
                "group archives it; it is not delivered again)",
                error=_described(error),
                fatal=decision.fatal,
                delivery_limit=self.policy.delivery_limit,
                exc_info=error,
                **where,
            )
            return REJECTED
        if action is Action.SKIP:
            self._skipped.inc()
            if isinstance(error, Skip):
                log.info("message skipped", reason=str(error), **where)
            else:
                log.error(
                    "retries exhausted; skipping the message (on_exhausted=skip)",
                    error=_described(error),
                    fatal=decision.fatal,
                    exc_info=error,
                    **where,
                )
            if self._manual:
                msg.ack()
                return AWAITING_ACK
            return FINISHED
        records = self._records
        assert records is not None
        if action is Action.RETRY_TOPIC:
            assert decision.stage is not None
            record = records.retry(msg, error, decision.stage)
        else:
            record = records.dead_letter(msg, error)
        failures = 0
        while (failure := (yield Write(record, msg))) is not None:
            failures += 1
            self._write_failures.inc()
            delay = self.policy.write_retry_delay(failures)
            log.error(
                "cannot write the failed message; the partition waits until it can",
                destination=record.topic,
                reason=str(failure),
                retry_in=round(delay, 3),
                **where,
            )
            if (yield Sleep(delay, (msg.lease,))):
                return NOT_FINISHED
        dead = action is Action.DEAD_LETTER
        (self._dead_lettered if dead else self._retried_later).inc()
        if dead:
            # Where it failed, on the line itself: the traceback comes with it at DEBUG, and
            # always in the JSON format's field (a message dead-lettered at its first failure
            # has had no retry warning to carry it).
            log.warning(
                "message sent to the dead-letter topic",
                destination=record.topic,
                error=_described(error),
                at=failed_at(error),
                exc_info=error,
                traceback_at="debug",  # the console shows it at DEBUG only (logging.py)
                **where,
            )
        else:
            log.info(
                "message sent to a delayed retry topic",
                destination=record.topic,
                error=_described(error),
                **where,
            )
        return DEAD_LETTERED if dead else FINISHED

    def _log_wait(
        self, msg: Message[Any], error: BaseException, decision: Decision, *, first: bool
    ) -> None:
        where = _where(self.spec, msg)
        if decision.action is Action.RETRY:
            log.warning(
                "handler failed; retrying",
                error=_described(error),
                retry_in=round(decision.delay, 3),
                exc_info=error if first else None,
                **where,
            )
        elif decision.action is Action.HOLD:
            log.warning(
                "circuit breaker open: holding the message", error=_described(error), **where
            )
        else:
            log.error(
                "retries exhausted and no dead-letter topic: retrying at the maximum backoff; "
                "the partition is stalled until the handler succeeds",
                error=_described(error),
                fatal=decision.fatal,
                retry_in=decision.delay,
                exc_info=error if msg.attempt == self.spec.retries + 1 else None,
                **where,
            )


class AttemptObserver(Protocol):
    def failed(self, msg: Message[Any], error: BaseException, decision: Decision) -> None:
        """A handler call (or a batch's, for this message) failed; `decision` is next."""
        ...

    def awaiting_ack(self, msg: Message[Any]) -> None:
        """A manual-ack message's handler returned without acking it."""
        ...

    def reported(self, completions: list[Completion]) -> None:
        """Completions just put on the completion queue (from the thread that put them)."""
        ...


class _ManualCalls:
    """A manual-ack message's handler call in progress, as its ack/nack callbacks see it."""

    __slots__ = ("calling", "lock", "returned")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calling = False
        # The handler returned without acking or nacking: a nack now hands the message back.
        self.returned = False


def failed_at(error: BaseException) -> str | None:
    """file:line of the innermost frame of `error`'s traceback: where the handler failed."""
    tb = error.__traceback__
    if tb is None:
        return None
    while tb.tb_next is not None:
        tb = tb.tb_next
    return f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}"


def _described(error: BaseException) -> str:
    return f"{error_type(error)}: {error}"


def _where(spec: HandlerSpec, msg: Message[Any]) -> dict[str, Any]:
    return {
        "handler": spec.name,
        "topic": msg.topic,
        "partition": msg.partition,
        "offset": msg.offset,
        "attempt": msg.attempt,
    }

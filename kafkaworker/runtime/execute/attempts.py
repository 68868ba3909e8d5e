"""Attempts: one message through the failure policy, as steps an executor carries out.

The handler runs; when it raises, the policy decides (failures/policy.py) and this module
turns the decision into steps: wait and run again, hold while the breaker is open, write to a
retry topic or the DLQ until the broker acknowledges it, or skip. It does no I/O and never
waits itself: it yields steps (steps.py) and an executor carries them out, in a worker thread
(pool.py) or on an event loop (aio.py). So the failure path is written once for both.
Every wait ends the moment the message's partition is revoked, and the message is then given
up (not finished).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Generator
from typing import Any, Protocol

import structlog

from kafkaworker.errors import SchemaRegistryUnavailable, Skip
from kafkaworker.handlers import HandlerSpec
from kafkaworker.message import Message
from kafkaworker.observability.metrics import Metrics
from kafkaworker.runtime.execute.steps import Call, Called, Emit, Sleep, Step, Write
from kafkaworker.runtime.failures.deadletter import FailureRecords, error_type
from kafkaworker.runtime.failures.policy import Action, Decision, FailurePolicy
from kafkaworker.runtime.handoff import Completion, CompletionQueue, Outcome, Run
from kafkaworker.runtime.poll.partitions import PartitionState

log = structlog.get_logger("kafkaworker.pool")

NOT_FINISHED, FINISHED = Outcome.NOT_FINISHED, Outcome.FINISHED
DEAD_LETTERED, AWAITING_ACK = Outcome.DEAD_LETTERED, Outcome.AWAITING_ACK
RELEASED, REJECTED = Outcome.RELEASED, Outcome.REJECTED
# While the breaker is open a held message checks this often whether it closed.
_HOLD_CHECK = 0.2
# Queue mode: the longest wait before releasing a record whose failure was no fault of its own.
_QUEUE_WAIT_MAX = 5.0

Steps = Generator[Step, Any, Outcome]


class Attempts:
    """A handler's messages under its failure policy; shared by its executor's workers."""

    def __init__(
        self,
        spec: HandlerSpec,
        policy: FailurePolicy,
        completions: CompletionQueue,
        *,
        metrics: Metrics,
        records: FailureRecords | None = None,
        emits: bool = False,
    ) -> None:
        self.spec = spec
        self.policy = policy
        self._completions = completions
        self.call = spec.call()
        self._records = records
        self._emits = emits  # the handler's return value is produced (outputs)
        # How a message nacked after its handler returned goes back to the executor (set by
        # the runtime once the executor exists).
        self.resubmit: Callable[[list[Run]], None] | None = None
        # Told of every failure and what was decided (the test client, the dashboard).
        self.observers: list[AttemptObserver] = []
        # The dashboard's recent-failures buffer. Not an observer: observers are also told of
        # every report, and this needs failures only, so successes pay nothing for it.
        self.failure_sink: Callable[[Message[Any], BaseException, Decision], None] | None = None
        self._manual = spec.ack == "manual"
        # Queue mode: a failure is decided once per delivery (msg.attempt is the broker's
        # delivery count); a retry is the broker's redelivery, never a wait here. The share
        # group's delivery count limit, once the source has read it: at that delivery a
        # failed record is settled (DLQ or REJECT) rather than released, which the broker
        # would archive without a trace.
        self._queue = spec.mode == "queue"
        self.delivery_limit: int | None = None
        name = spec.name
        self._handler_failures = metrics.handler_failures.labels(name)
        self._skipped = metrics.skipped.labels(name)
        self._stalled = metrics.stalled.labels(name)
        self._dead_lettered = metrics.dead_lettered.labels(name)
        self._retried_later = metrics.retried_later.labels(name)
        self._write_failures = metrics.dead_letter_write_failures.labels(name)

    def steps(self, msg: Message[Any], failed: BaseException | None = None) -> Steps:
        """Run the handler until the message is finished, dead-lettered, awaiting its ack, or
        given up. `failed`: the error of a first call the executor made already."""
        state: PartitionState = msg._state
        manual = self._manual
        failures = 0
        nacks: list[BaseException] = []  # nacks during the handler call
        if manual:
            resumed = msg._take_nack()  # a nack after an earlier call had returned
            if resumed is not None:
                failed, failures = resumed
            calls = self._manual_callbacks(msg, state, nacks, lambda: failures)
        while True:
            error = failed
            failed = None
            if error is None:
                if manual:
                    calls.calling = True
                called: Called = yield Call(self.call, msg)
                error = called.error
                if manual and error is None:
                    with calls.lock:  # nacked during the call: no outputs for it
                        error = nacks[0] if nacks else None
                if error is None and self._emits:
                    error = yield Emit(msg, called.result)
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
                    return AWAITING_ACK if manual else FINISHED
            if manual and msg.acked:
                return AWAITING_ACK  # acknowledged before it raised: finished for Kafka
            if not isinstance(error, Skip):
                if state.revoked:
                    return NOT_FINISHED
                failures += 1
                self._handler_failures.inc()
            if self._queue:
                return (yield from self._queue_failure(msg, error))
            decision = self.policy.decide(msg.topic, error, failures)
            self.observe(msg, error, decision)
            if decision.final:
                return (yield from self.settle(msg, error, decision))
            self._log_wait(msg, error, decision, first=failures == 1)
            if (yield from self.wait(decision, (state,))):
                return NOT_FINISHED
            msg.attempt += 1

    def _queue_failure(self, msg: Message[Any], error: BaseException) -> Steps:
        """Queue mode: one failed delivery. RELEASE while deliveries are left (the policy's
        RETRY, without its backoff: the broker redelivers at once, maybe to another member),
        else the DLQ (written and acknowledged, then REJECT) or, with no DLQ, REJECT."""
        failures = msg.attempt
        limit = self.delivery_limit
        last = limit is not None and failures >= limit
        if last:
            # The broker archives a record released at its last delivery: settle it here.
            failures = max(failures, self.spec.retries + 1)
        decision = self.policy.decide(msg.topic, error, failures)
        if last and decision.action is Action.RETRY:
            # A retry whatever `retries` says (a Schema Registry that does not answer): at the
            # last delivery a release would be archived by the broker, with no DLQ record.
            decision = (
                Decision(Action.DEAD_LETTER, topic=self.spec.dlq)
                if self.spec.dlq is not None and self._records is not None
                else Decision(Action.STALL)
            )
        self.observe(msg, error, decision)
        where = _where(self.spec, msg)
        if decision.action is Action.RETRY and isinstance(error, SchemaRegistryUnavailable):
            # No fault of the record, and the next delivery would fail the same way at once:
            # wait the backoff before releasing (this member's next fetch waits too, which is
            # right while the registry is down), or the deliveries would be spent in
            # milliseconds. Capped well below the shortest lock a broker allows (15 s).
            delay = min(decision.delay, _QUEUE_WAIT_MAX)
            log.warning(
                "the Schema Registry did not answer; releasing the record after a backoff",
                error=_described(error),
                retry_in=round(delay, 3),
                **where,
            )
            if (yield Sleep(delay, (msg._state,))):
                return NOT_FINISHED
            return RELEASED
        if decision.action is Action.RETRY:
            log.warning(
                "handler failed; releasing the record to the share group for redelivery",
                error=_described(error),
                exc_info=error if msg.attempt == 1 else None,
                **where,
            )
            return RELEASED
        if decision.action is Action.DEAD_LETTER:
            return (yield from self.settle(msg, error, decision))
        if decision.action is Action.SKIP and isinstance(error, Skip):
            self._skipped.inc()
            log.info("message skipped", reason=str(error), **where)
            return FINISHED
        # STALL, or on_exhausted="skip": nowhere to write it, and stalling would hold the
        # record's lock (and the member's next fetch) forever.
        self._skipped.inc()
        log.error(
            "retries exhausted and no dead-letter topic: rejecting the record (the share "
            "group archives it; it is not delivered again)",
            error=_described(error),
            fatal=decision.fatal,
            delivery_limit=limit,
            exc_info=error,
            **where,
        )
        return REJECTED

    def observe(self, msg: Message[Any], error: BaseException, decision: Decision) -> None:
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
        msg: Message[Any],
        state: PartitionState,
        nacks: list[BaseException],
        failures: Callable[[], int],
    ) -> _ManualCalls:
        """Bind msg.ack() and msg.nack() for a manual-ack message. An ack reports it finished
        (once, whoever claims it first). A nack during the handler call fails that call; a
        nack after it returned holds the error on the message and hands the message back to
        the executor, whose next run of it takes the failure path. Any other nack is ignored:
        the message is on the failure path already (a backoff, a DLQ write) or was handed
        back by an earlier nack, and handing it back again would run it twice."""
        completions = self._completions
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
            msg._hold_nack(error, failures())
            assert self.resubmit is not None
            self.resubmit([(state, [msg])])

        def ack() -> None:
            report = [Completion(state, [msg.offset], FINISHED)]
            completions.put(report)
            if self.observers:
                self.reported(report)

        msg._on_ack(ack)
        msg._on_nack(nack)
        return calls

    def wait(
        self, decision: Decision, partitions: Collection[PartitionState]
    ) -> Generator[Step, Any, bool]:
        """Wait as a RETRY, STALL or HOLD decision says; True when a partition was revoked
        meanwhile (the message is then given up)."""
        if decision.action is Action.HOLD:
            breaker = self.policy.breaker
            while breaker is not None and breaker.open:
                if (yield Sleep(_HOLD_CHECK, partitions)):
                    return True
            return False
        if decision.action is Action.STALL:
            self._stalled.inc()
            try:
                revoked: bool = yield Sleep(decision.delay, partitions, stall=True)
            finally:
                self._stalled.dec()
            return revoked
        revoked = yield Sleep(decision.delay, partitions)
        return revoked

    def settle(
        self, msg: Message[Any], error: BaseException, decision: Decision
    ) -> Generator[Step, Any, Outcome]:
        """Carry out a final decision: skip, or write to a retry topic or the DLQ until the
        broker acknowledges it (only then is the message finished; meanwhile its partition
        waits, nothing is committed past it). The message's outcome."""
        where = _where(self.spec, msg)
        if decision.action is Action.SKIP:
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
        if decision.action is Action.RETRY_TOPIC:
            assert decision.stage is not None
            record = records.retry(msg, error, decision.stage)
        else:
            record = records.dead_letter(msg, error)
        failures = 0
        while (failure := (yield Write(record))) is not None:
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
            if (yield Sleep(delay, (msg._state,))):
                return NOT_FINISHED
        dead = decision.action is Action.DEAD_LETTER
        (self._dead_lettered if dead else self._retried_later).inc()
        (log.warning if dead else log.info)(
            "message sent to the dead-letter topic"
            if dead
            else "message sent to a delayed retry topic",
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

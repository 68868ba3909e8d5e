"""Attempts: one message through the failure policy, in the calling worker thread.

The handler runs; when it raises, the policy decides (failures/policy.py) and this module
carries the decision out: wait and run again, hold while the breaker is open, write to a
retry topic or the DLQ until the broker acknowledges it, or skip. Every wait ends the moment
the message's partition is revoked, and the message is then given up (not finished).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection
from typing import Any

import structlog

from kafkaworker.errors import Skip
from kafkaworker.handlers import HandlerSpec
from kafkaworker.message import Message
from kafkaworker.observability.metrics import Metrics
from kafkaworker.runtime.execute.outputs import Outputs
from kafkaworker.runtime.execute.revocations import Revocations
from kafkaworker.runtime.failures.deadletter import FailurePublisher, error_type
from kafkaworker.runtime.failures.policy import Action, Decision, FailurePolicy
from kafkaworker.runtime.handoff import Completion, CompletionQueue, Outcome
from kafkaworker.runtime.poll.partitions import PartitionState

log = structlog.get_logger("kafkaworker.pool")

NOT_FINISHED, FINISHED = Outcome.NOT_FINISHED, Outcome.FINISHED
DEAD_LETTERED, AWAITING_ACK = Outcome.DEAD_LETTERED, Outcome.AWAITING_ACK
# While the breaker is open a held message checks this often whether it closed.
_HOLD_CHECK = 0.2


class Attempts:
    """Runs a handler's messages under its failure policy; shared by its worker threads."""

    def __init__(
        self,
        spec: HandlerSpec,
        policy: FailurePolicy,
        revocations: Revocations,
        completions: CompletionQueue,
        *,
        metrics: Metrics,
        publisher: FailurePublisher | None = None,
        outputs: Outputs | None = None,
    ) -> None:
        self.spec = spec
        self.policy = policy
        self.revocations = revocations
        self._completions = completions
        self._call = spec.call()
        self._publisher = publisher
        self._outputs = outputs
        self._manual = spec.ack == "manual"
        name = spec.name
        self._handler_failures = metrics.handler_failures.labels(name)
        self._skipped = metrics.skipped.labels(name)
        self._stalled = metrics.stalled.labels(name)
        self._dead_lettered = metrics.dead_lettered.labels(name)
        self._retried_later = metrics.retried_later.labels(name)
        self._write_failures = metrics.dead_letter_write_failures.labels(name)

    def run(
        self,
        msg: Message[Any],
        *,
        before_wait: Callable[[], None],
        failed: BaseException | None = None,
    ) -> Outcome:
        """Run the handler until the message is finished, dead-lettered, awaiting its ack, or
        given up. `failed`: the error of a first call the caller made already.
        `before_wait`: called before any wait (the caller reports what it finished first)."""
        state: PartitionState = msg._state
        manual = self._manual
        if manual:
            completions = self._completions
            msg._on_ack(lambda: completions.put([Completion(state, [msg.offset], FINISHED)]))
        failures = 0
        while True:
            try:
                if failed is not None:
                    error, failed = failed, None
                    raise error
                result = self._call(msg)
                if self._outputs is not None:
                    self._outputs.emit(msg, result)
                return AWAITING_ACK if manual else FINISHED
            # Any handler error, even a BaseException such as SystemExit, goes through the
            # policy. (Signals reach the main thread only, never a handler.)
            except BaseException as exc:  # noqa: BLE001 - the failure policy decides
                if manual and msg.acked:
                    return AWAITING_ACK  # acknowledged before it raised: finished for Kafka
                skipped = isinstance(exc, Skip)
                if not skipped:
                    if state.revoked:
                        return NOT_FINISHED
                    failures += 1
                    self._handler_failures.inc()
                decision = self.policy.decide(msg.topic, exc, failures)
                if decision.final:
                    return self.settle(msg, exc, decision, before_wait=before_wait)
                self._log_wait(msg, exc, decision, first=failures == 1)
                before_wait()  # what this thread finished must not wait out the backoff
                if not self.wait(decision, (state,)):
                    return NOT_FINISHED
                msg.attempt += 1

    def wait(self, decision: Decision, partitions: Collection[PartitionState]) -> bool:
        """Wait as a RETRY, STALL or HOLD decision says; False when a partition was revoked
        meanwhile (the message is then given up)."""
        wait_unless_revoked = self.revocations.wait_unless_revoked
        if decision.action is Action.HOLD:
            breaker = self.policy.breaker
            while breaker is not None and breaker.open:
                if wait_unless_revoked(partitions, _HOLD_CHECK):
                    return False
            return True
        if decision.action is Action.STALL:
            self._stalled.inc()
            try:
                return not wait_unless_revoked(partitions, decision.delay)
            finally:
                self._stalled.dec()
        return not wait_unless_revoked(partitions, decision.delay)

    def settle(
        self,
        msg: Message[Any],
        error: BaseException,
        decision: Decision,
        *,
        before_wait: Callable[[], None],
    ) -> Outcome:
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
        before_wait()
        publisher = self._publisher
        assert publisher is not None and decision.topic is not None
        if decision.action is Action.RETRY_TOPIC:
            assert decision.stage is not None
            write = functools.partial(publisher.publish_retry, msg, error, decision.stage)
        else:
            write = functools.partial(publisher.publish, msg, error)
        failures = 0
        while True:
            try:
                write()
                break
            except Exception as exc:  # noqa: BLE001 - every failure is retried the same way
                failures += 1
                self._write_failures.inc()
                delay = self.policy.write_retry_delay(failures)
                log.error(
                    "cannot write the failed message; the partition waits until it can",
                    destination=decision.topic,
                    reason=str(exc),
                    retry_in=round(delay, 3),
                    **where,
                )
                before_wait()
                if self.revocations.wait_unless_revoked((msg._state,), delay):
                    return NOT_FINISHED
        dead = decision.action is Action.DEAD_LETTER
        (self._dead_lettered if dead else self._retried_later).inc()
        (log.warning if dead else log.info)(
            "message sent to the dead-letter topic"
            if dead
            else "message sent to a delayed retry topic",
            destination=decision.topic,
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

"""The failure policy: what happens to a message whose handler call failed. Pure: no Kafka, no
threads, no waiting.

One decision per failure, from the error, how many times the message has failed here, and
the handler's options. The executors carry it out (wait, write, report); none of them decides
anything itself. A call that returned is finished: only failures are decided.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import Enum

from kafkaworker.errors import DeadLetter, DeserializationError, SchemaRegistryUnavailable, Skip
from kafkaworker.handlers import HandlerSpec
from kafkaworker.runtime.failures.breaker import CircuitBreaker
from kafkaworker.runtime.failures.retrytopics import RetryRoutes, Stage


class Action(Enum):
    RETRY = "retry"  # run the handler again after `delay`
    RETRY_TOPIC = "retry topic"  # publish to the next delayed retry topic: then finished
    DEAD_LETTER = "dead letter"  # publish to the DLQ: then dead-lettered
    HOLD = "hold"  # the circuit breaker is open: run again once it closes
    STALL = "stall"  # nowhere to go: run again after `delay`, the maximum backoff
    SKIP = "skip"  # finished without being handled (raise Skip, or on_exhausted="skip")


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    # No retry can fix it: an undecodable payload, a validation error, DeadLetter, an error
    # outside retry_on. Fatal failures skip the in-place retries and the retry topics.
    fatal: bool = False
    delay: float = 0.0  # RETRY and STALL
    stage: Stage | None = None  # RETRY_TOPIC
    topic: str | None = None  # where RETRY_TOPIC and DEAD_LETTER write

    @property
    def final(self) -> bool:
        """Whether the message is settled by it (rather than run again)."""
        return self.action in _FINAL


_FINAL = frozenset({Action.RETRY_TOPIC, Action.DEAD_LETTER, Action.SKIP})
FATAL_ERRORS: tuple[type[BaseException], ...] = (DeserializationError, DeadLetter, Skip)


def is_fatal(error: BaseException) -> bool:
    """Errors that no retry can fix: bad payloads, and the handler's explicit verdicts."""
    if isinstance(error, FATAL_ERRORS):
        return True
    # pydantic is a dependency, but imported lazily: most handlers never raise its errors.
    from pydantic import ValidationError  # noqa: PLC0415

    return isinstance(error, ValidationError)


class FailurePolicy:
    """One handler's failure policy: `retries` with `backoff` for errors in `retry_on`, then
    the next delayed retry topic, the DLQ, or `on_exhausted` ("stall" or "skip")."""

    def __init__(
        self,
        spec: HandlerSpec,
        *,
        routes: RetryRoutes | None = None,
        can_publish: bool = False,
        breaker: CircuitBreaker | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.spec = spec
        self.routes = routes
        # Whether failed messages can be written anywhere (a producer for the DLQ and the
        # retry topics): without it they stall or are skipped.
        self.can_publish = can_publish
        self.breaker = breaker
        self._rng = rng

    def decide(self, topic: str, error: BaseException, failures: int) -> Decision:
        """What to do after the `failures`-th failed call (1-based) of a message of `topic`."""
        spec = self.spec
        if isinstance(error, Skip):
            return Decision(Action.SKIP, fatal=True)
        if isinstance(error, SchemaRegistryUnavailable):
            # The Schema Registry did not answer: no fault of the record, so it is neither
            # dead-lettered nor skipped, whatever `retries` says; it waits with backoff.
            return Decision(Action.RETRY, delay=spec.backoff.delay(failures, self._rng))
        fatal = is_fatal(error) or not isinstance(error, spec.retry_on)
        if not fatal and failures <= spec.retries:
            return Decision(Action.RETRY, delay=spec.backoff.delay(failures, self._rng))
        breaker = self.breaker
        if breaker is not None and breaker.open:
            # Most messages are failing (a bad deploy?): hold this one rather than fill the
            # DLQ, and run the handler again once the breaker closes.
            return Decision(Action.HOLD, fatal=fatal)
        if self.can_publish:
            # A delayed retry topic comes first (fatal errors skip them), the DLQ after the last.
            stage = None if fatal or self.routes is None else self.routes.next_stage(topic)
            if stage is not None:
                return Decision(Action.RETRY_TOPIC, fatal=fatal, stage=stage, topic=stage.topic)
            if spec.dlq is not None:
                return Decision(Action.DEAD_LETTER, fatal=fatal, topic=spec.dlq)
        if spec.on_exhausted == "skip":
            return Decision(Action.SKIP, fatal=fatal)
        # Nowhere to send it and skipping not allowed: it is never dropped silently.
        return Decision(Action.STALL, fatal=fatal, delay=spec.backoff.max)

    def write_retry_delay(self, failures: int) -> float:
        """How long to wait before writing to a retry topic or the DLQ again, after `failures`
        failed writes: the handler's backoff, at least 50 ms."""
        return max(0.05, self.spec.backoff.delay(failures, self._rng))

"""The failure policy: what happens to a message whose handler call failed. Pure: no Kafka, no
threads, no waiting.

One decision per failure, from the error, how many times the message has failed here, and
the handler's options; in queue mode, per delivery, from the broker's delivery count; for a
batch, how the messages left to run again wait together. Attempts and batches (execute/) carry
decisions out as steps (wait, write, report); nothing else decides. A call that returned is
finished: only failures are decided.

The CircuitBreaker decides for the handler as a whole: when more than `threshold` of the last
`window` finished messages went to the DLQ (and at least `min_messages` were seen), it opens:
the handler's partitions are paused and messages that would be dead-lettered wait instead
(HOLD). After `cooldown` seconds it closes with an empty window, so it needs fresh evidence to
open again; the waiting messages then run their handler again. The poll thread feeds it
outcomes and the clock; workers only read `open`.
"""

from __future__ import annotations

import itertools
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field
from enum import Enum
from typing import Literal

from kafkaworker.errors import (
    DatabaseUnavailable,
    DeadLetter,
    DeserializationError,
    SchemaRegistryUnavailable,
    Skip,
)
from kafkaworker.handlers import HandlerSpec
from kafkaworker.runtime.failures.retrytopics import RetryRoutes, Stage


class Action(Enum):
    RETRY = "retry"  # run the handler again after `delay`
    RETRY_TOPIC = "retry topic"  # publish to the next delayed retry topic: then finished
    DEAD_LETTER = "dead letter"  # publish to the DLQ: then dead-lettered
    HOLD = "hold"  # the circuit breaker is open: run again once it closes
    STALL = "stall"  # nowhere to go: run again after `delay`, the maximum backoff
    SKIP = "skip"  # finished without being handled (raise Skip, or on_exhausted="skip")
    # Queue mode (share groups): back to the share group, which delivers it again, maybe to
    # another member, with its delivery count raised (after `delay`, when there is one).
    RELEASE = "release"
    # Queue mode: nowhere to write it: REJECTed, archived by the broker, never delivered again.
    REJECT = "reject"


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


_FINAL = frozenset(
    {Action.RETRY_TOPIC, Action.DEAD_LETTER, Action.SKIP, Action.RELEASE, Action.REJECT}
)
# Queue mode: the longest wait before releasing a record whose failure was no fault of its own
# (a Schema Registry that does not answer): it holds the member's next fetch, and stays well
# below the shortest lock a broker allows (15 s).
QUEUE_WAIT_MAX = 5.0
FATAL_ERRORS: tuple[type[BaseException], ...] = (DeserializationError, DeadLetter, Skip)


def is_fatal(error: BaseException) -> bool:
    """Errors that no retry can fix: bad payloads, and the handler's explicit verdicts."""
    if isinstance(error, FATAL_ERRORS):
        return True
    # pydantic is a dependency, but imported lazily: most handlers never raise its errors.
    from pydantic import ValidationError  # noqa: PLC0415

    return isinstance(error, ValidationError)


@dataclass(eq=False)
class FailurePolicy:
    """One handler's failure policy: `retries` with `backoff` for errors in `retry_on`, then
    the next delayed retry topic, the DLQ, or `on_exhausted` ("stall" or "skip").
    `can_publish`: whether failed messages can be written anywhere (a producer for the DLQ and
    the retry topics): without it they stall or are skipped. `delivery_limit` (queue mode):
    the share group's delivery count limit, once the source has read it."""

    spec: HandlerSpec
    _: KW_ONLY
    routes: RetryRoutes | None = None
    can_publish: bool = False
    breaker: CircuitBreaker | None = None
    rng: random.Random | None = None
    delivery_limit: int | None = None

    def decide(self, topic: str, error: BaseException, failures: int) -> Decision:
        """What to do after the `failures`-th failed call (1-based) of a message of `topic`."""
        spec = self.spec
        if isinstance(error, Skip):
            return Decision(Action.SKIP, fatal=True)
        if isinstance(error, SchemaRegistryUnavailable | DatabaseUnavailable):
            # The Schema Registry or an inbox's database did not answer: no fault of the
            # record, so it is neither dead-lettered nor skipped, whatever `retries` says; it
            # waits with backoff.
            return Decision(Action.RETRY, delay=spec.backoff.delay(failures, self.rng))
        fatal = is_fatal(error) or not isinstance(error, spec.retry_on)
        if not fatal and failures <= spec.retries:
            return Decision(Action.RETRY, delay=spec.backoff.delay(failures, self.rng))
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

    def decide_delivery(self, topic: str, error: BaseException, delivery: int) -> Decision:
        """Queue mode: what to do after the failed `delivery`-th delivery (1-based, the
        broker's count, to any member) of a record of `topic`. A retry is a release (the
        broker redelivers at once, maybe to another member), never a wait here: a record
        waiting out a backoff would hold the member's next fetch, and the count of attempts
        would be split between the process and the broker. At the share group's delivery
        limit the record is settled (DLQ, or REJECT): one released at its last delivery would
        be archived by the broker without a trace."""
        limit = self.delivery_limit
        last = limit is not None and delivery >= limit
        failures = max(delivery, self.spec.retries + 1) if last else delivery
        decision = self.decide(topic, error, failures)
        action = decision.action
        if action is Action.RETRY and not last:
            # A Schema Registry that does not answer is no fault of the record, and the next
            # delivery would fail the same way at once: wait the backoff (capped) before the
            # release, or the deliveries would be spent in milliseconds.
            delay = (
                min(decision.delay, QUEUE_WAIT_MAX)
                if isinstance(error, SchemaRegistryUnavailable)
                else 0.0
            )
            return Decision(Action.RELEASE, fatal=decision.fatal, delay=delay)
        if action is Action.RETRY and self.can_publish and self.spec.dlq is not None:
            # At the last delivery a retry "whatever `retries` says" (the registry) is spent.
            return Decision(Action.DEAD_LETTER, fatal=decision.fatal, topic=self.spec.dlq)
        if action is Action.DEAD_LETTER or (action is Action.SKIP and isinstance(error, Skip)):
            return decision
        # STALL, on_exhausted="skip", or a spent retry with no DLQ: stalling would hold the
        # record's lock (and the member's next fetch) forever.
        return Decision(Action.REJECT, fatal=decision.fatal)

    @staticmethod
    def together(decisions: list[Decision]) -> Decision:
        """How the failed messages of a batch that are run again (decisions not final) wait
        together: held while the breaker is open, else stalled if one has nowhere to go, else
        the first one's backoff."""
        for action in (Action.HOLD, Action.STALL):
            for decision in decisions:
                if decision.action is action:
                    return decision
        return decisions[0]

    @staticmethod
    def one_at_a_time(decisions: list[Decision]) -> bool:
        """Whether a batch's failure must be run again one message at a time: a fatal error
        raised for a batch of several cannot say which message it is about (one undecodable
        record, say), and only the bad ones may be settled."""
        return len(decisions) > 1 and all(d.fatal for d in decisions)

    def write_retry_delay(self, failures: int) -> float:
        """How long to wait before writing to a retry topic or the DLQ again, after `failures`
        failed writes: the handler's backoff, at least 50 ms."""
        return max(0.05, self.spec.backoff.delay(failures, self.rng))


@dataclass(eq=False, kw_only=True)
class CircuitBreaker:
    """A handler's breaker: open while more than `threshold` of the last `window` finished
    messages were dead-lettered (with at least `min_messages` seen), for `cooldown` seconds."""

    threshold: float
    window: int
    min_messages: int
    cooldown: float
    clock: Callable[[], float] = time.monotonic
    open: bool = field(default=False, init=False)
    # Opened by an operator (the dashboard): stays open until an operator closes it.
    held: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self._outcomes: deque[bool] = deque(maxlen=self.window)
        self._dead_lettered = 0
        self._opened_at = 0.0

    def record(self, dead_lettered: bool, count: int = 1) -> None:
        """`count` finished messages with the same outcome (workers report runs)."""
        outcomes = self._outcomes
        window = outcomes.maxlen or 0
        # The oldest outcomes leave the window as these come in.
        leaving = len(outcomes) + count - window
        if leaving >= len(outcomes):
            self._dead_lettered = 0
        elif leaving > 0:
            self._dead_lettered -= sum(itertools.islice(outcomes, leaving))
        kept = min(count, window)
        outcomes.extend(itertools.repeat(dead_lettered, kept))
        self._dead_lettered += dead_lettered * kept

    @property
    def share(self) -> float:
        return self._dead_lettered / len(self._outcomes) if self._outcomes else 0.0

    def closes_in(self) -> float:
        """Seconds until an open breaker closes (at the next update() from then on); 0 when
        it is closed."""
        if not self.open:
            return 0.0
        return max(0.0, self._opened_at + self.cooldown - self.clock())

    def force(self, open_: bool) -> Literal["opened", "closed"] | None:
        """An operator's decision: open (held until closed by an operator) or close now
        (with an empty window, as after a cooldown); the transition, if any."""
        was_open = self.open
        self.held = open_
        if open_:
            if not was_open:
                self.open = True
                self._opened_at = self.clock()
                return "opened"
            return None
        self.open = False
        self._outcomes.clear()
        self._dead_lettered = 0
        return "closed" if was_open else None

    def update(self) -> Literal["opened", "closed"] | None:
        """Open or close as the evidence and the clock say; return the transition, if any."""
        if self.held:
            return None
        if self.open:
            if self.clock() - self._opened_at >= self.cooldown:
                self.open = False
                self._outcomes.clear()
                self._dead_lettered = 0
                return "closed"
            return None
        if len(self._outcomes) >= self.min_messages and self.share > self.threshold:
            self.open = True
            self._opened_at = self.clock()
            return "opened"
        return None

"""The failure decision: one table, for every executor."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from kafkaworker import App, Backoff, DeadLetter, DeserializationError, Message, Skip
from kafkaworker.errors import SchemaRegistryUnavailable
from kafkaworker.handlers import HandlerSpec
from kafkaworker.runtime.clock import ManualClock
from kafkaworker.runtime.failures.policy import (
    QUEUE_WAIT_MAX,
    Action,
    CircuitBreaker,
    Decision,
    FailurePolicy,
)
from kafkaworker.runtime.failures.retrytopics import RetryRoutes


class TransientError(Exception):
    pass


class OtherError(Exception):
    pass


class Model(BaseModel):
    n: int


def validation_error() -> ValidationError:
    try:
        Model.model_validate({"n": "x"})
    except ValidationError as exc:
        return exc
    raise AssertionError("unreachable")


def spec(**options: Any) -> HandlerSpec:
    app = App("svc")

    def handle(msg: Message[Any]) -> None:
        pass

    app.handler("orders", **options)(handle)
    return app.handlers["handle"]


def policy(
    *, breaker_open: bool = False, can_publish: bool = True, **options: Any
) -> FailurePolicy:
    handler = spec(**options)
    routes = RetryRoutes(handler.topics, handler.retry_topics) if handler.retry_topics else None
    breaker = None
    if breaker_open:
        breaker = CircuitBreaker(
            threshold=0.5, window=4, min_messages=2, cooldown=30, clock=ManualClock().monotonic
        )
        breaker.record(True, 4)
        assert breaker.update() == "opened"
    return FailurePolicy(
        handler, routes=routes, can_publish=can_publish, breaker=breaker, rng=random.Random(7)
    )


FATAL = [
    DeserializationError("bad bytes"),
    DeadLetter("poison"),
    validation_error(),
]


def test_retryable_errors_retry_with_the_handlers_backoff_until_retries_are_spent() -> None:
    p = policy(retries=3, backoff=Backoff(initial=1, multiplier=2, max=10, jitter="none"))
    assert [p.decide("orders", TransientError(), n).delay for n in (1, 2, 3)] == [1, 2, 4]
    assert {p.decide("orders", TransientError(), n).action for n in (1, 2, 3)} == {Action.RETRY}
    spent = p.decide("orders", TransientError(), 4)
    assert (spent.action, spent.fatal) == (Action.STALL, False)
    assert spent.delay == 10  # stalled at the maximum backoff, never dropped


@pytest.mark.parametrize("error", FATAL, ids=lambda e: type(e).__name__)
def test_fatal_errors_skip_the_retries_and_the_retry_topics(error: BaseException) -> None:
    p = policy(retries=5, dlq="orders.dlq", retry_topics=[5, 60])
    decision = p.decide("orders", error, 1)
    assert (decision.action, decision.fatal, decision.topic) == (
        Action.DEAD_LETTER,
        True,
        "orders.dlq",
    )


def test_errors_outside_retry_on_are_fatal() -> None:
    p = policy(retries=5, dlq="orders.dlq", retry_on=TransientError)
    assert p.decide("orders", TransientError(), 1).action is Action.RETRY
    other = p.decide("orders", OtherError(), 1)
    assert (other.action, other.fatal) == (Action.DEAD_LETTER, True)


def test_raising_skip_skips_whatever_the_options() -> None:
    for options in ({}, {"dlq": "orders.dlq", "retries": 3}, {"on_exhausted": "skip"}):
        assert policy(**options).decide("orders", Skip("dup"), 0).action is Action.SKIP


def test_spent_messages_go_through_the_retry_topics_then_the_dlq() -> None:
    p = policy(retries=1, dlq="orders.dlq", retry_topics=[5, 60])
    assert p.decide("orders", TransientError(), 1).action is Action.RETRY
    first = p.decide("orders", TransientError(), 2)
    assert (first.action, first.topic) == (Action.RETRY_TOPIC, "orders.retry.5s")
    assert first.stage is not None and first.stage.delay == 5
    second = p.decide("orders.retry.5s", TransientError(), 2)
    assert (second.action, second.topic) == (Action.RETRY_TOPIC, "orders.retry.60s")
    last = p.decide("orders.retry.60s", TransientError(), 2)
    assert (last.action, last.topic) == (Action.DEAD_LETTER, "orders.dlq")


def test_retry_topics_without_a_dlq_stall_after_the_last_stage() -> None:
    p = policy(retry_topics=[5])
    assert p.decide("orders", TransientError(), 1).action is Action.RETRY_TOPIC
    assert p.decide("orders.retry.5s", TransientError(), 1).action is Action.STALL
    skip = policy(retry_topics=[5], on_exhausted="skip")
    assert skip.decide("orders.retry.5s", TransientError(), 1).action is Action.SKIP


def test_an_open_breaker_holds_what_would_be_written() -> None:
    p = policy(retries=1, dlq="orders.dlq", breaker_open=True)
    assert p.decide("orders", TransientError(), 1).action is Action.RETRY  # retries come first
    assert p.decide("orders", TransientError(), 2).action is Action.HOLD
    assert p.decide("orders", DeadLetter("x"), 1).action is Action.HOLD


def test_nowhere_to_write_stalls_or_skips_as_on_exhausted_says() -> None:
    # A DLQ declared but nothing to write with: never dropped silently.
    assert policy(dlq="orders.dlq", can_publish=False).decide("orders", OtherError(), 1).action is (
        Action.STALL
    )
    assert policy(on_exhausted="skip").decide("orders", OtherError(), 1).action is Action.SKIP


def test_write_retries_wait_at_least_50_ms() -> None:
    p = policy(backoff=Backoff(initial=0, max=0))
    assert p.write_retry_delay(1) == 0.05
    slow = policy(backoff=Backoff(initial=2, multiplier=1, max=2, jitter="none"))
    assert slow.write_retry_delay(3) == 2


ERRORS = st.sampled_from([TransientError(), OtherError(), Skip("s"), *FATAL])


@given(
    error=ERRORS,
    failures=st.integers(min_value=1, max_value=10),
    retries=st.integers(min_value=0, max_value=5),
    dlq=st.booleans(),
    stages=st.sampled_from([(), (5.0,), (5.0, 60.0)]),
    breaker_open=st.booleans(),
    on_exhausted=st.sampled_from(["stall", "skip"]),
    topic_stage=st.integers(min_value=0, max_value=2),
)
def test_every_failure_gets_exactly_one_coherent_decision(  # noqa: PLR0917
    error: BaseException,
    failures: int,
    retries: int,
    dlq: bool,
    stages: tuple[float, ...],
    breaker_open: bool,
    on_exhausted: str,
    topic_stage: int,
) -> None:
    p = policy(
        retries=retries,
        retry_on=TransientError,
        dlq="orders.dlq" if dlq else None,
        retry_topics=list(stages),
        breaker_open=breaker_open and dlq,
        on_exhausted=on_exhausted,
    )
    topics = ["orders", *(f"orders.retry.{d:g}s" for d in stages)]
    topic = topics[min(topic_stage, len(topics) - 1)]
    decision = p.decide(topic, error, failures)
    fatal = not isinstance(error, TransientError)
    if isinstance(error, Skip):
        assert decision.action is Action.SKIP
        return
    assert decision.fatal is fatal
    if not fatal and failures <= retries:
        assert decision.action is Action.RETRY
        assert 0 <= decision.delay <= Backoff().max
    elif breaker_open and dlq:
        assert decision.action is Action.HOLD
    elif not fatal and topic != topics[-1]:
        assert decision.action is Action.RETRY_TOPIC
        assert decision.topic == topics[topics.index(topic) + 1]
    elif dlq:
        assert (decision.action, decision.topic) == (Action.DEAD_LETTER, "orders.dlq")
    else:
        assert decision.action is (Action.SKIP if on_exhausted == "skip" else Action.STALL)
    # Final decisions settle the message; the others run it again.
    assert decision.final is (
        decision.action in {Action.RETRY_TOPIC, Action.DEAD_LETTER, Action.SKIP}
    )


# -- queue mode: one decision per delivery (the broker's count) ------------------------------

UNAVAILABLE = SchemaRegistryUnavailable("the Schema Registry did not answer")


def queue_policy(*, limit: int | None = 5, **options: Any) -> FailurePolicy:
    p = policy(mode="queue", **options)
    p.delivery_limit = limit
    return p


@pytest.mark.parametrize(
    ("options", "error", "delivery", "action"),
    [
        # A retry is a release while deliveries are left (retries counts redeliveries).
        ({"retries": 3, "dlq": "orders.dlq"}, TransientError(), 1, Action.RELEASE),
        ({"retries": 3, "dlq": "orders.dlq"}, TransientError(), 3, Action.RELEASE),
        ({"retries": 3, "dlq": "orders.dlq"}, TransientError(), 4, Action.DEAD_LETTER),
        # A fatal error is dead-lettered at its first delivery.
        ({"retries": 3, "dlq": "orders.dlq"}, DeadLetter("poison"), 1, Action.DEAD_LETTER),
        # At the group's delivery limit, whatever retries says: settled, never released (the
        # broker would archive a release of the last delivery without a trace).
        ({"retries": 10, "dlq": "orders.dlq"}, TransientError(), 4, Action.RELEASE),
        ({"retries": 10, "dlq": "orders.dlq"}, TransientError(), 5, Action.DEAD_LETTER),
        ({"retries": 10}, TransientError(), 5, Action.REJECT),
        # Nowhere to write it: rejected (a stall would hold the lock and the next fetch).
        ({"retries": 1}, TransientError(), 2, Action.REJECT),
        ({"retries": 1, "on_exhausted": "skip"}, TransientError(), 2, Action.REJECT),
        # Skip raised by the handler: accepted.
        ({"retries": 3}, Skip("duplicate"), 1, Action.SKIP),
        # A registry that does not answer: released after a wait, but settled at the limit.
        ({"retries": 0}, UNAVAILABLE, 1, Action.RELEASE),
        ({"retries": 0, "dlq": "orders.dlq"}, UNAVAILABLE, 5, Action.DEAD_LETTER),
        ({"retries": 0}, UNAVAILABLE, 5, Action.REJECT),
    ],
)
def test_queue_mode_decides_each_delivery(
    options: dict[str, Any], error: BaseException, delivery: int, action: Action
) -> None:
    decision = queue_policy(**options).decide_delivery("orders", error, delivery)
    assert decision.action is action
    assert decision.final  # a queue-mode failure is settled for this delivery, always


@pytest.mark.parametrize(
    ("error", "waits"),
    [(TransientError(), False), (UNAVAILABLE, True)],
)
def test_only_a_failure_that_is_no_fault_of_the_record_waits_before_its_release(
    error: BaseException, waits: bool
) -> None:
    p = queue_policy(retries=3, backoff=Backoff(initial=60, max=60, jitter="none"))
    decision = p.decide_delivery("orders", error, 1)
    assert decision.action is Action.RELEASE
    # Capped far below the shortest lock a broker allows (15 s): the member's fetch waits.
    assert decision.delay == (QUEUE_WAIT_MAX if waits else 0.0)


def test_without_a_known_delivery_limit_a_queue_retry_is_always_a_release() -> None:
    p = queue_policy(limit=None, retries=100)
    assert p.decide_delivery("orders", TransientError(), 99).action is Action.RELEASE


# -- batches: how the failed messages run again together --------------------------------------

RETRY_1 = Decision(Action.RETRY, delay=1.0)
RETRY_2 = Decision(Action.RETRY, delay=2.0)
STALL = Decision(Action.STALL, delay=30.0)
HOLD = Decision(Action.HOLD)


@pytest.mark.parametrize(
    ("decisions", "together"),
    [
        ([RETRY_1], RETRY_1),
        ([RETRY_2, RETRY_1], RETRY_2),  # the first one's backoff
        ([RETRY_1, STALL], STALL),  # one has nowhere to go: all wait as it does
        ([STALL, HOLD, RETRY_1], HOLD),  # the breaker is open: held first
        ([RETRY_1, HOLD], HOLD),
    ],
)
def test_a_batch_waits_as_its_most_blocked_message_says(
    decisions: list[Decision], together: Decision
) -> None:
    assert FailurePolicy.together(decisions) is together


@pytest.mark.parametrize(
    ("decisions", "split"),
    [
        ([Decision(Action.DEAD_LETTER, fatal=True)], False),  # one message: it is the bad one
        ([Decision(Action.DEAD_LETTER, fatal=True)] * 3, True),  # which one? run them alone
        ([Decision(Action.DEAD_LETTER, fatal=True), RETRY_1], False),
        ([RETRY_1, RETRY_2], False),
    ],
)
def test_a_fatal_error_for_a_whole_batch_runs_it_again_one_message_at_a_time(
    decisions: list[Decision], split: bool
) -> None:
    assert FailurePolicy.one_at_a_time(decisions) is split

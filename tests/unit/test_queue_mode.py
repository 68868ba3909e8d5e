"""Queue mode (share groups) without a broker: what is refused at declaration, how settings
switch a handler's mode, the share consumer's configuration, and the failure path's decision
per delivery (RELEASE, DLQ then REJECT, REJECT)."""

from __future__ import annotations

import queue
from typing import Any

import pytest

from kafkaworker import App, Message
from kafkaworker.errors import ConfigError, DeadLetter, Skip
from kafkaworker.handlers import BatchPolicy, HandlerSpec
from kafkaworker.observability.metrics import Metrics
from kafkaworker.runtime.execute.attempts import Attempts
from kafkaworker.runtime.execute.steps import Call, Called, Write
from kafkaworker.runtime.failures.deadletter import FailureRecords
from kafkaworker.runtime.failures.policy import FailurePolicy
from kafkaworker.runtime.handoff import Outcome
from kafkaworker.runtime.poll.partitions import PartitionState
from kafkaworker.runtime.runner import resolve_specs
from kafkaworker.runtime.source.share_group import share_consumer_config
from kafkaworker.settings import Settings, check_client_properties


def job(msg: Message[Any]) -> None:
    pass


def spec(**options: Any) -> HandlerSpec:
    return HandlerSpec(name="work", func=job, topics=("jobs",), mode="queue", **options)


def test_queue_mode_defaults_to_no_ordering_and_stream_mode_to_partition_ordering() -> None:
    assert spec().ordering == "none"
    assert HandlerSpec(name="s", func=job, topics=("jobs",)).ordering == "partition"
    assert spec().describe()["mode"] == "queue"


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"ordering": "partition"}, "no order can be kept"),
        ({"ordering": "key"}, 'mode="queue" needs ordering="none"'),
        ({"retry_topics": (5.0,)}, "redelivers it: remove retry_topics"),
        ({"ack": "manual"}, 'ack="manual" is for stream mode'),
        ({"batch": BatchPolicy()}, "batch handlers are for stream mode"),
    ],
)
def test_what_a_share_group_cannot_honour_is_refused_at_declaration(
    options: dict[str, Any], words: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        spec(**options)
    message = str(caught.value)
    assert words in message
    assert "\n" not in message
    assert message.startswith("handler 'work': ")


def test_an_unknown_mode_is_refused() -> None:
    with pytest.raises(ConfigError, match="mode='queues' is invalid: allowed are stream, queue"):
        HandlerSpec(name="w", func=job, topics=("jobs",), mode="queues")  # type: ignore[arg-type]


def test_the_decorator_declares_queue_mode() -> None:
    app = App("svc")
    app.handler("jobs", mode="queue", group="jobs-workers", concurrency=16)(job)
    declared = app.handlers["job"]
    assert (declared.mode, declared.ordering, declared.group) == ("queue", "none", "jobs-workers")
    with pytest.raises(ConfigError, match="no order can be kept"):
        app.handler("jobs", name="other", mode="queue", ordering="key")(job)


def test_settings_switch_a_handler_to_queue_mode() -> None:
    app = App("svc")
    app.handler("jobs", group="jobs-workers")(job)  # stream mode, ordering by default
    settings = Settings(handlers={"job": {"mode": "queue"}})
    [resolved] = resolve_specs(app, settings)
    assert (resolved.mode, resolved.ordering) == ("queue", "none")
    # ...but an ordering the handler asked for is not dropped silently.
    keyed = App("svc")
    keyed.handler("jobs", ordering="key")(job)
    with pytest.raises(ConfigError, match="no order can be kept"):
        resolve_specs(keyed, settings)


def test_a_share_group_and_a_consumer_group_cannot_share_a_name() -> None:
    app = App("svc")
    app.handler("jobs", mode="queue")(job)
    app.handler("orders", name="orders")(job)  # both default to the app's name
    with pytest.raises(ConfigError, match="cannot have one name; give one of them group="):
        resolve_specs(app, Settings())


def test_the_implicit_acknowledgement_mode_is_refused() -> None:
    settings = Settings(kafka={"share_consumer": {"share.acknowledgement.mode": "implicit"}})
    with pytest.raises(
        ConfigError, match=r"kafka\.share_consumer\.share\.acknowledgement\.mode is"
    ):
        check_client_properties(settings)


def test_the_share_consumer_gets_no_consumer_group_properties() -> None:
    settings = Settings(
        kafka={
            "consumer": {"session.timeout.ms": 6000, "socket.timeout.ms": 5000},
            "share_consumer": {"max.poll.records": 7},
        }
    )
    config = share_consumer_config("svc", spec(group="jobs-workers", concurrency=3), settings)
    assert config["group.id"] == "jobs-workers"
    assert config["share.acknowledgement.mode"] == "explicit"
    assert "session.timeout.ms" not in config  # a share consumer refuses it
    assert config["socket.timeout.ms"] == 5000  # connection settings reach it
    assert config["max.poll.records"] == 7  # the raw property wins
    default = share_consumer_config("svc", spec(concurrency=3), Settings())
    assert default["max.poll.records"] == 24  # eight rounds of the workers


# -- the failure path, one delivery at a time ----------------------------------------------


class FlakyError(Exception):
    pass


def settle(handler: HandlerSpec, error: BaseException, attempt: int, limit: int = 5) -> Outcome:
    """The outcome of delivery `attempt` of a record whose handler raised `error`."""
    records = FailureRecords(handler.dlq, group="g", handler=handler.name) if handler.dlq else None
    attempts = Attempts(
        handler,
        FailurePolicy(handler, can_publish=records is not None),
        queue.SimpleQueue(),
        metrics=Metrics(),
        records=records,
    )
    attempts.delivery_limit = limit
    msg = Message("jobs", b"1", attempt=attempt)
    msg._state = PartitionState("jobs", 0)
    steps = attempts.steps(msg)
    reply: Any = None
    while True:
        try:
            step = steps.send(reply)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        if isinstance(step, Call):
            reply = Called(error=error)
        else:
            assert isinstance(step, Write), step  # never a wait: a retry is a redelivery
            assert step.record.topic == handler.dlq
            reply = None  # acknowledged by the broker


def test_a_retryable_failure_with_retries_left_is_released() -> None:
    assert settle(spec(retries=3, dlq="jobs.dlq"), FlakyError(), attempt=1) is Outcome.RELEASED
    assert settle(spec(retries=3, dlq="jobs.dlq"), FlakyError(), attempt=3) is Outcome.RELEASED


def test_retries_spent_go_to_the_dlq_then_reject() -> None:
    assert settle(spec(retries=3, dlq="jobs.dlq"), FlakyError(), attempt=4) is Outcome.DEAD_LETTERED


def test_a_fatal_error_goes_to_the_dlq_at_the_first_delivery() -> None:
    handler = spec(retries=3, dlq="jobs.dlq")
    assert settle(handler, DeadLetter("poison"), attempt=1) is Outcome.DEAD_LETTERED


def test_the_last_delivery_the_broker_allows_is_dead_lettered_not_released() -> None:
    handler = spec(retries=10, dlq="jobs.dlq")
    assert settle(handler, FlakyError(), attempt=4, limit=5) is Outcome.RELEASED
    assert settle(handler, FlakyError(), attempt=5, limit=5) is Outcome.DEAD_LETTERED


def test_without_a_dlq_spent_retries_are_rejected_never_looped() -> None:
    assert settle(spec(retries=1), FlakyError(), attempt=2) is Outcome.REJECTED
    assert settle(spec(retries=1, on_exhausted="skip"), FlakyError(), attempt=2) is Outcome.REJECTED
    assert settle(spec(retries=10), FlakyError(), attempt=5, limit=5) is Outcome.REJECTED


def test_skip_raised_by_the_handler_is_accepted() -> None:
    assert settle(spec(retries=3), Skip("duplicate"), attempt=1) is Outcome.FINISHED

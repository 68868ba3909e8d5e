"""Queue mode (share groups) without a broker: what is refused at declaration, how settings
switch a handler's mode, the share consumer's configuration, and the failure path's decision
per delivery (RELEASE, DLQ then REJECT, REJECT)."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from confluent_kafka import Message as Record

from kafkaworker import App, Message
from kafkaworker.errors import ConfigError, DeadLetter, SchemaRegistryUnavailable, Skip
from kafkaworker.handlers import BatchPolicy, HandlerSpec, resolve_specs
from kafkaworker.message import DispatchedMessage
from kafkaworker.observability.metrics import Metrics
from kafkaworker.runtime.compose import AppRuntime, GivenSources
from kafkaworker.runtime.execute.attempts import Attempts
from kafkaworker.runtime.execute.outputs import FailureRecords
from kafkaworker.runtime.execute.steps import Sleep, Write
from kafkaworker.runtime.failures.policy import FailurePolicy
from kafkaworker.runtime.handler_runtime import HandlerRuntime
from kafkaworker.runtime.handoff import Lease, Outcome
from kafkaworker.runtime.source import Partition
from kafkaworker.runtime.source.memory_share import MemoryShareSource
from kafkaworker.runtime.source.share_group import share_consumer_config
from kafkaworker.serialization import CODECS
from kafkaworker.settings import Settings, check_client_properties
from kafkaworker.testing.producer import MemoryProducer
from tests.support import as_kind
from tests.unit.runtime_support import settings as runtime_settings
from tests.unit.runtime_support import spec_for


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
    policy = FailurePolicy(handler, can_publish=records is not None)
    policy.delivery_limit = limit
    attempts = Attempts(handler, policy, metrics=Metrics(), records=records)

    def fail(msg: Any) -> None:
        raise error

    attempts.call = fail
    record = Record(topic="jobs", partition=0, offset=0, value=b"1")
    [msg] = DispatchedMessage.run_of(Lease(Partition("jobs", 0)), [record], [0], CODECS["raw"])
    msg.attempt = attempt
    steps = attempts.steps(msg)
    reply: Any = None
    while True:
        try:
            step = steps.send(reply)
        except StopIteration as done:
            outcome, _ = done.value
            return outcome  # type: ignore[no-any-return]
        if isinstance(step, Sleep):
            # Only for a failure that is no fault of the record: else a retry is a release.
            assert isinstance(error, SchemaRegistryUnavailable), step
            assert 0 < step.seconds <= 5.0
            reply = False  # not revoked
        else:
            assert isinstance(step, Write), step
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


def test_a_registry_that_does_not_answer_waits_before_the_release_and_never_loses() -> None:
    down = SchemaRegistryUnavailable("the Schema Registry did not answer")
    # Retried whatever `retries` says (no fault of the record), after a backoff...
    assert settle(spec(retries=0), down, attempt=1) is Outcome.RELEASED
    # ...but never released at the last delivery, which the broker would archive unseen.
    assert settle(spec(retries=0, dlq="jobs.dlq"), down, attempt=5) is Outcome.DEAD_LETTERED
    assert settle(spec(retries=0), down, attempt=5) is Outcome.REJECTED


def test_skip_raised_by_the_handler_is_accepted() -> None:
    assert settle(spec(retries=3), Skip("duplicate"), attempt=1) is Outcome.FINISHED


# -- the share poller and the executors over the in-memory share group ----------------------


@contextmanager
def queue_running(
    func: Callable[..., Any],
    source: MemoryShareSource,
    producer: MemoryProducer | None = None,
    **options: Any,
) -> Iterator[HandlerRuntime]:
    """A queue-mode HandlerRuntime over `source`, started; stopped on exit. DLQ records go
    to `producer`."""
    handler = spec_for(func, mode="queue", **options)
    runtime = AppRuntime(
        App("svc"),
        runtime_settings(),
        [handler],
        sources=GivenSources(queue={handler.name: (source, source.config)}),
        producer=producer or MemoryProducer(),
    )
    with runtime:
        [one] = runtime.handlers
        one.start()
        yield one
        one.request_stop()
        assert one.join(30), "the poll thread did not stop"
    assert one.error is None, one.error


def all_finished(source: MemoryShareSource, count: int) -> bool:
    return len(source.finished) == count


def test_every_record_is_accepted_once_handled_a_fetch_at_a_time(kind: str) -> None:
    source = MemoryShareSource({"t": 2}, max_records=10)
    for i in range(200):
        source.broker.append("t", b"%d" % i, partition=i % 2)
    seen: list[int] = []
    lock = threading.Lock()

    def handle(msg: Message[Any]) -> None:
        assert msg.attempt == 1
        with lock:
            seen.append(int(msg.value))

    with queue_running(as_kind(kind, handle), source, concurrency=4):
        assert source.wait_for(lambda s: all_finished(s, 200), 30)
    assert sorted(seen) == list(range(200))
    assert {name for _, _, name in source.acknowledged} == {"accept"}
    assert len(source.acknowledged) == 200
    # The fake, like the client, refuses a fetch before the last one is acknowledged: the
    # poller never tried (it would have failed the runtime), and fetched in pieces.
    assert max(source.fetches) <= 10


def test_a_failure_is_released_and_the_redelivery_is_the_next_attempt(kind: str) -> None:
    source = MemoryShareSource({"t": 1})
    source.broker.append("t", b"7")
    attempts: list[int] = []

    def handle(msg: Message[Any]) -> None:
        attempts.append(msg.attempt)
        if msg.attempt < 3:
            raise FlakyError("not yet")

    with queue_running(as_kind(kind, handle), source, retries=3):
        assert source.wait_for(lambda s: all_finished(s, 1), 30)
    assert attempts == [1, 2, 3]
    assert [name for _, _, name in source.acknowledged] == ["release", "release", "accept"]


def test_spent_retries_are_dead_lettered_before_the_reject(kind: str) -> None:
    source = MemoryShareSource({"t": 1}, delivery_limit=10)
    source.broker.append("t", b"7")

    def handle(msg: Message[Any]) -> None:
        raise FlakyError(f"delivery {msg.attempt}")

    producer = MemoryProducer()
    with queue_running(as_kind(kind, handle), source, producer, retries=1, dlq="t.dlq"):
        assert source.wait_for(lambda s: all_finished(s, 1), 30)
    assert [name for _, _, name in source.acknowledged] == ["release", "reject"]
    [dead] = [r for r in producer.records if r.topic == "t.dlq"]
    assert dead.header("kw.attempts") == b"2"


def test_shutdown_releases_what_was_not_started(kind: str) -> None:
    source = MemoryShareSource({"t": 1}, max_records=8)
    for i in range(8):
        source.broker.append("t", b"%d" % i)
    started, release = threading.Event(), threading.Event()

    def handle(msg: Message[Any]) -> None:
        started.set()
        assert release.wait(10)

    with queue_running(as_kind(kind, handle), source, concurrency=2):
        assert started.wait(10)
        threading.Timer(0.3, release.set).start()
    names = Counter(name for _, _, name in source.acknowledged)
    assert names == {"accept": 2, "release": 6}  # two ran and finished; six never started
    assert source.closed


def test_manifests_give_a_share_group_no_keda_scaled_object() -> None:
    from kafkaworker.ops.kubernetes import Options, Route, build  # noqa: PLC0415

    routes = [Route("work", ("jobs",), "workers", "queue"), Route("orders", ("orders",), "svc")]
    workloads = build("svc", routes, Settings(), Options("m:app", "img:1"))
    kinds = {w.group: sorted(doc["kind"] for doc in w.manifests) for w in workloads}
    # KEDA's Kafka scaler reads consumer-group lag, which a share group does not have.
    assert "ScaledObject" not in kinds["workers"]
    assert {"Deployment", "PodDisruptionBudget", "Service"} <= set(kinds["workers"])
    assert "ScaledObject" in kinds["svc"]

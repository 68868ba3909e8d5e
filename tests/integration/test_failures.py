"""Failure handling against the real broker: retries, backoff, the DLQ, Skip, the breaker."""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient

from kafkaworker import App, Backoff, DeadLetter, Message, Skip, StartupError
from kafkaworker.handlers import resolve_specs
from kafkaworker.runtime.runner import Runner
from tests.conftest import TopicFactory
from tests.support import (
    committed,
    make_settings,
    of_kind,
    produce,
    read_topic,
    running,
    wait_until,
)

pytestmark = pytest.mark.kafka


def kw_headers(record: Any) -> dict[str, str]:
    return {k: v.decode() for k, v in record.headers() or [] if k.startswith("kw.")}


def test_retries_then_dlq_with_exact_attempts_and_growing_jittered_backoff(
    kafka_bootstrap: str, new_topic: TopicFactory, kind: str
) -> None:
    topic = new_topic(1)
    dlq = f"{topic}.dlq"
    produce(kafka_bootstrap, topic, [b'{"id": 1}'])
    attempts: list[tuple[int, float]] = []
    app = App(f"g-{topic}")
    backoff = Backoff(initial=0.1, multiplier=2.0, max=0.4, jitter="equal")

    @app.handler(topic, retries=3, backoff=backoff, dlq=dlq)
    @of_kind(kind)
    def handle(msg: Message[Any]) -> None:
        attempts.append((msg.attempt, time.monotonic()))
        raise ConnectionError("downstream unavailable")

    with running(app, make_settings(kafka_bootstrap)):
        (record,) = read_topic(kafka_bootstrap, dlq, 1)
        wait_until(
            lambda: committed(kafka_bootstrap, app.name, topic, 1) == {0: 1},
            30,
            "the offset committed once the DLQ record is acknowledged",
        )
    assert [n for n, _ in attempts] == [1, 2, 3, 4]
    assert kw_headers(record)["kw.attempts"] == "4"
    gaps = [b - a for (_, a), (_, b) in itertools.pairwise(attempts)]
    # Equal jitter: each wait is in [ceiling/2, ceiling]; ceilings 0.1, 0.2, 0.4.
    for gap, ceiling in zip(gaps, (0.1, 0.2, 0.4), strict=True):
        # The lower bounds prove the growth; the upper slack absorbs a loaded machine.
        assert ceiling / 2 <= gap <= ceiling + 0.5, gaps


def test_dlq_record_is_the_original_byte_for_byte_plus_failure_headers(
    kafka_bootstrap: str, new_topic: TopicFactory, kind: str
) -> None:
    topic = new_topic(2)
    dlq = f"{topic}.dlq"
    value = b'{"id": 7, "note": "\xc3\xa9"}'
    producer_headers = [("trace-id", b"abc"), ("binary", b"\x00\xff"), ("none", None)]
    from confluent_kafka import Producer  # noqa: PLC0415

    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    producer.produce(
        topic,
        value,
        key=b"customer-9",
        partition=1,
        headers=producer_headers,
        timestamp=1_700_000_000_123,
    )
    assert producer.flush(10) == 0
    app = App(f"g-{topic}")

    @app.handler(topic, dlq=dlq)
    @of_kind(kind)
    def handle_order(msg: Message[Any]) -> None:
        raise ValueError(f"order {msg.value['id']} has no items")

    before = time.time()
    with running(app, make_settings(kafka_bootstrap)):
        (record,) = read_topic(kafka_bootstrap, dlq, 1)
    assert record.key() == b"customer-9"
    assert record.value() == value
    headers = record.headers()
    assert headers[:3] == [("trace-id", b"abc"), ("binary", b"\x00\xff"), ("none", None)]
    kw = kw_headers(record)
    failed_at = kw.pop("kw.failed_at")
    traceback = kw.pop("kw.error.traceback")
    assert kw == {
        "kw.original.topic": topic,
        "kw.original.partition": "1",
        "kw.original.offset": "0",
        "kw.original.timestamp": "1700000000123",
        "kw.group": app.name,
        "kw.handler": "handle_order",
        "kw.attempts": "1",
        "kw.error.type": "builtins.ValueError",
        "kw.error.message": "order 7 has no items",
    }
    assert "ValueError: order 7 has no items" in traceback
    assert failed_at.endswith("+00:00")
    from datetime import datetime  # noqa: PLC0415

    assert datetime.fromisoformat(failed_at).timestamp() >= before - 1
    # The DLQ topic was created at start-up, as large as the source topic.
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    assert len(admin.list_topics(dlq, timeout=10).topics[dlq].partitions) == 2


@pytest.mark.parametrize(
    ("codec", "payload", "error_type"),
    [
        ("json", b'{"id": 1,', "kafkaworker.errors.DeserializationError"),
        ("json", b"", "kafkaworker.errors.DeserializationError"),
        ("text", b"caf\xe9", "kafkaworker.errors.DeserializationError"),
    ],
)
def test_undecodable_payloads_go_to_the_dlq_after_one_attempt(  # noqa: PLR0917 - fixtures
    kafka_bootstrap: str,
    new_topic: TopicFactory,
    codec: str,
    payload: bytes,
    error_type: str,
    kind: str,
) -> None:
    topic = new_topic(1)
    dlq = f"{topic}.dlq"
    produce(kafka_bootstrap, topic, [payload])
    calls: list[int] = []
    app = App(f"g-{topic}")

    @app.handler(topic, codec=codec, retries=5, dlq=dlq)
    @of_kind(kind)
    def handle(msg: Message[Any]) -> None:
        calls.append(msg.attempt)
        _ = msg.value

    with running(app, make_settings(kafka_bootstrap)):
        (record,) = read_topic(kafka_bootstrap, dlq, 1)
    assert calls == [1]
    assert record.value() == payload
    kw = kw_headers(record)
    assert (kw["kw.error.type"], kw["kw.attempts"]) == (error_type, "1")


def test_dead_letter_skips_retries_and_skip_finishes_without_a_record(
    kafka_bootstrap: str, new_topic: TopicFactory, kind: str
) -> None:
    topic = new_topic(1)
    dlq = f"{topic}.dlq"
    produce(kafka_bootstrap, topic, [b'"poison"', b'"duplicate"', b'"fine"'])
    calls: list[str] = []
    app = App(f"g-{topic}")

    @app.handler(topic, retries=5, dlq=dlq)
    @of_kind(kind)
    def handle(msg: Message[Any]) -> None:
        calls.append(msg.value)
        if msg.value == "poison":
            raise DeadLetter("price is negative")
        if msg.value == "duplicate":
            raise Skip("seen before")

    with running(app, make_settings(kafka_bootstrap)) as runner:
        wait_until(
            lambda: committed(kafka_bootstrap, app.name, topic, 1) == {0: 3},
            30,
            "all three finished",
        )
        metrics = runner.metrics
        assert metrics.value("kafkaworker_skipped_total", handler="handle") == 1
        assert metrics.value("kafkaworker_dead_lettered_total", handler="handle") == 1
    (record,) = read_topic(kafka_bootstrap, dlq, 1)
    assert record.value() == b'"poison"'
    assert kw_headers(record)["kw.error.type"] == "kafkaworker.errors.DeadLetter"
    assert calls == ["poison", "duplicate", "fine"]


def test_on_exhausted_skip_moves_on_after_the_retries(
    kafka_bootstrap: str, new_topic: TopicFactory, kind: str
) -> None:
    topic = new_topic(1)
    produce(kafka_bootstrap, topic, [b"1", b"2"])
    attempts: list[tuple[int, int]] = []
    app = App(f"g-{topic}")

    @app.handler(topic, retries=1, backoff=Backoff(initial=0.01, max=0.02), on_exhausted="skip")
    @of_kind(kind)
    def handle(msg: Message[Any]) -> None:
        attempts.append((msg.offset, msg.attempt))
        if msg.offset == 0:
            raise RuntimeError("always")

    with running(app, make_settings(kafka_bootstrap)):
        wait_until(
            lambda: committed(kafka_bootstrap, app.name, topic, 1) == {0: 2}, 30, "both finished"
        )
    assert attempts == [(0, 1), (0, 2), (1, 1)]


def test_an_unwritable_dlq_stalls_the_partition_and_recovers_when_writable(
    kafka_bootstrap: str, new_topic: TopicFactory, admin: AdminClient, kind: str
) -> None:
    topic = new_topic(1)
    dlq = new_topic(1, prefix="dlq")
    produce(kafka_bootstrap, topic, [b"0", b"1", b"2"])
    app = App(f"g-{topic}")
    # The bad record fails only once its DLQ is gone: a worker quick to start would otherwise
    # dead-letter it before the deletion below.
    dlq_gone = threading.Event()

    @app.handler(topic, dlq=dlq, backoff=Backoff(initial=0.05, max=0.2))
    @of_kind(kind)
    def handle(msg: Message[Any]) -> None:
        if msg.offset == 1:
            assert dlq_gone.wait(30)
            raise DeadLetter("bad record")

    settings = make_settings(
        kafka_bootstrap,
        dead_letter={"create_topics": False, "timeout": 2.0},
        kafka={
            "bootstrap_servers": kafka_bootstrap,
            "producer": {"message.timeout.ms": 2000, "topic.metadata.refresh.interval.ms": 500},
        },
    )
    # The DLQ topic goes away after start-up: every DLQ write now fails.
    with running(app, settings) as runner:
        admin.delete_topics([dlq], operation_timeout=30)[dlq].result(timeout=30)
        dlq_gone.set()
        metrics = runner.metrics
        wait_until(
            lambda: (
                metrics.value("kafkaworker_dead_letter_write_failures_total", handler="handle") >= 2
            ),
            60,
            "failed DLQ writes",
        )
        assert committed(kafka_bootstrap, app.name, topic, 1) in ({0: 1}, {0: 0})
        from confluent_kafka.admin import NewTopic  # noqa: PLC0415

        def recreate() -> bool:
            futures = admin.create_topics([NewTopic(dlq, 1, 1)])
            try:
                futures[dlq].result(timeout=10)
            except Exception:  # noqa: BLE001 - still being deleted: try again
                return False
            return True

        wait_until(recreate, 60, "the DLQ topic to be created again", step=0.5)
        wait_until(
            lambda: committed(kafka_bootstrap, app.name, topic, 1) == {0: 3},
            60,
            "the partition to flow again once the DLQ is writable",
        )
    records = read_topic(kafka_bootstrap, dlq, 1)
    assert records[0].value() == b"1"


def test_circuit_breaker_opens_instead_of_dead_lettering_everything_then_resets(
    kafka_bootstrap: str, new_topic: TopicFactory, kind: str
) -> None:
    topic = new_topic(1)
    dlq = f"{topic}.dlq"
    produce(kafka_bootstrap, topic, [b"%d" % i for i in range(40)])
    broken = threading.Event()
    broken.set()
    handled: list[int] = []
    app = App(f"g-{topic}")

    @app.handler(topic, dlq=dlq, codec="raw")
    @of_kind(kind)
    def handle(msg: Message[Any]) -> None:
        if broken.is_set():
            raise DeadLetter("bad deploy")
        handled.append(msg.offset)

    settings = make_settings(
        kafka_bootstrap,
        circuit_breaker={"threshold": 0.5, "window": 10, "min_messages": 5, "cooldown": 2.0},
    )
    with running(app, settings) as runner:
        metrics = runner.metrics
        wait_until(
            lambda: metrics.value("kafkaworker_circuit_open", handler="handle") == 1,
            30,
            "the breaker to open",
        )
        dead_lettered = metrics.value("kafkaworker_dead_lettered_total", handler="handle")
        assert 5 <= dead_lettered < 40
        broken.clear()  # the fix is deployed
        wait_until(
            lambda: metrics.value("kafkaworker_circuit_open", handler="handle") == 0,
            30,
            "the breaker to close after its cooldown",
        )
        wait_until(
            lambda: committed(kafka_bootstrap, app.name, topic, 1) == {0: 40},
            30,
            "the rest handled after the reset",
        )
        # Held while open, not dead-lettered: the DLQ count moved by at most the one message
        # whose DLQ write was already under way when the breaker opened (one partition, so
        # one lane, so one message in flight).
        final = metrics.value("kafkaworker_dead_lettered_total", handler="handle")
        assert dead_lettered <= final <= dead_lettered + 1
    assert len(handled) == 40 - final


def test_missing_dlq_topic_fails_start_up_when_creation_is_off(
    kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    topic = new_topic(1)
    app = App(f"g-{topic}")

    @app.handler(topic, dlq=f"{topic}.dlq")
    def handle(msg: Message[Any]) -> None:
        pass

    settings = make_settings(kafka_bootstrap, dead_letter={"create_topics": False})
    with pytest.raises(StartupError) as error:
        Runner(app, settings, resolve_specs(app, settings)).run()
    assert str(error.value) == (
        f"dead-letter topic '{topic}.dlq' (handler 'handle') does not exist on "
        f"{kafka_bootstrap}: create it, or set dead_letter.create_topics: true"
    )

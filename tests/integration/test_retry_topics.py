"""Delayed retry topics against the real broker: due times, flow, and the DLQ at the end."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from confluent_kafka import Producer

from kafkaworker import App, DeadLetter, Message
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


def test_retry_topics_respect_due_times_while_the_source_partition_flows(
    kafka_bootstrap: str, new_topic: TopicFactory, kind: str
) -> None:
    topic = new_topic(1)
    produce(kafka_bootstrap, topic, [b"%d" % i for i in range(10)])
    lock = threading.Lock()
    seen: list[tuple[str, int, int, float]] = []  # (topic, value, attempt, time)
    app = App(f"g-{topic}")

    @app.handler(topic, retry_topics=[1, 2], codec="raw")
    @of_kind(kind)
    def handle(msg: Message[bytes]) -> None:
        with lock:
            seen.append((msg.topic, int(msg.value), msg.attempt, time.monotonic()))
        if msg.value == b"0" and msg.attempt < 3:
            raise TimeoutError("inventory service timed out")

    with running(app, make_settings(kafka_bootstrap)):
        wait_until(
            lambda: committed(kafka_bootstrap, app.name, topic, 1) == {0: 10},
            30,
            "the source partition to be committed to its end",
        )
        source_done = time.monotonic()
        wait_until(lambda: len(seen) == 12, 30, "the third attempt, from the second stage")

    first, *others = [s for s in seen if s[1] == 0]
    assert [(t, attempt) for t, _, attempt, _ in [first, *others]] == [
        (topic, 1),
        (f"{topic}.retry.1s", 2),
        (f"{topic}.retry.2s", 3),
    ]
    # The source partition did not wait for the retries: all of it was done before them.
    assert source_done < others[0][3]
    assert sorted(v for t, v, _, _ in seen if t == topic) == list(range(10))
    # Each stage waited its delay (measured from the attempt that failed).
    assert others[0][3] - first[3] >= 1.0
    assert others[1][3] - others[0][3] >= 2.0


def test_after_the_last_stage_the_dlq_record_names_the_first_origin(
    kafka_bootstrap: str, new_topic: TopicFactory, kind: str
) -> None:
    topic = new_topic(1)
    dlq = f"{topic}.dlq"
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    producer.produce(topic, b"payload", key=b"k", headers=[("trace", b"t1")])
    producer.produce(topic, b"fatal", key=b"k2")
    assert producer.flush(10) == 0
    app = App(f"g-{topic}")

    @app.handler(topic, retry_topics=[0.5], dlq=dlq, codec="raw")
    @of_kind(kind)
    def handle(msg: Message[Any]) -> None:
        if msg.value == b"fatal":
            raise DeadLetter("not retryable")
        raise ValueError("still failing")

    with running(app, make_settings(kafka_bootstrap)):
        records = read_topic(kafka_bootstrap, dlq, 2)
    by_value = {r.value(): r for r in records}
    retried = by_value[b"payload"]
    assert retried.key() == b"k"
    headers = retried.headers()
    assert headers[0] == ("trace", b"t1")
    kw = {k: v.decode() for k, v in headers if k.startswith("kw.")}
    assert kw["kw.original.topic"] == topic
    assert (kw["kw.original.partition"], kw["kw.original.offset"]) == ("0", "0")
    assert kw["kw.attempts"] == "2"  # once on the topic, once on its retry stage
    assert "kw.retry.due" not in kw
    assert [name for name, _ in headers].count("kw.original.topic") == 1
    fatal = {k: v.decode() for k, v in by_value[b"fatal"].headers() if k.startswith("kw.")}
    assert (fatal["kw.attempts"], fatal["kw.original.offset"]) == ("1", "1")

"""Batch handlers against the real broker."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from kafkaworker import App, Backoff, BatchFailures, BatchPolicy, Message
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


def test_batches_are_bounded_ordered_and_complete(
    kafka_bootstrap: str, new_topic: TopicFactory, kind: str
) -> None:
    topic = new_topic(2)
    total = 1000
    produce(
        kafka_bootstrap,
        topic,
        [b"%d" % i for i in range(total)],
        partitions=[i % 2 for i in range(total)],
    )
    lock = threading.Lock()
    batches: list[list[tuple[int, int]]] = []
    app = App(f"g-{topic}")

    @app.handler(topic, batch=BatchPolicy(max_size=64, max_wait=0.05), codec="raw")
    @of_kind(kind)
    def handle(messages: list[Message[bytes]]) -> None:
        with lock:
            batches.append([(m.partition, m.offset) for m in messages])

    with running(app, make_settings(kafka_bootstrap)):
        wait_until(
            lambda: committed(kafka_bootstrap, app.name, topic, 2) == {0: 500, 1: 500},
            30,
            "everything committed",
        )
    assert max(len(b) for b in batches) <= 64
    assert len(batches) < total / 4  # really batched
    seen = [item for b in batches for item in b]
    assert sorted(seen) == sorted({(i % 2, i // 2) for i in range(total)})
    for partition in (0, 1):
        offsets = [o for p, o in seen if p == partition]
        assert offsets == sorted(offsets)  # partition order kept across batches


def test_batch_failures_dead_letter_only_the_failed_messages(
    kafka_bootstrap: str, new_topic: TopicFactory, kind: str
) -> None:
    topic = new_topic(1)
    dlq = f"{topic}.dlq"
    produce(kafka_bootstrap, topic, [b"%d" % i for i in range(20)])
    calls: list[list[int]] = []
    app = App(f"g-{topic}")

    @app.handler(
        topic, batch=BatchPolicy(max_size=100, max_wait=0.2), codec="raw", retries=1, dlq=dlq
    )
    @of_kind(kind)
    def handle(messages: list[Message[Any]]) -> None:
        calls.append([m.offset for m in messages])
        bad = [m for m in messages if m.offset == 7]
        if bad:
            raise BatchFailures({m: ValueError("row 7 violates a constraint") for m in bad})

    with running(app, make_settings(kafka_bootstrap)):
        (record,) = read_topic(kafka_bootstrap, dlq, 1)
        wait_until(
            lambda: committed(kafka_bootstrap, app.name, topic, 1) == {0: 20},
            30,
            "all twenty finished",
        )
    assert record.value() == b"7"
    kw = {k: v.decode() for k, v in record.headers() if k.startswith("kw.")}
    assert (kw["kw.error.type"], kw["kw.attempts"]) == ("builtins.ValueError", "2")
    # Retried alone: the other nineteen were finished by the first call.
    assert calls[-1] == [7]
    assert sorted({o for call in calls for o in call}) == list(range(20))


def test_one_undecodable_record_does_not_take_its_batch_to_the_dlq(
    kafka_bootstrap: str, new_topic: TopicFactory, kind: str
) -> None:
    topic = new_topic(1)
    dlq = f"{topic}.dlq"
    produce(kafka_bootstrap, topic, [b'{"n": 1}', b"{broken", b'{"n": 3}'])
    stored: list[int] = []
    app = App(f"g-{topic}")

    @app.handler(topic, batch=BatchPolicy(max_size=10, max_wait=0.2), dlq=dlq)
    @of_kind(kind)
    def handle(messages: list[Message[Any]]) -> None:
        values = [m.value["n"] for m in messages]  # decoding the broken one raises
        stored.extend(values)

    with running(app, make_settings(kafka_bootstrap)):
        (record,) = read_topic(kafka_bootstrap, dlq, 1)
        wait_until(
            lambda: committed(kafka_bootstrap, app.name, topic, 1) == {0: 3},
            30,
            "all three finished",
        )
    assert record.value() == b"{broken"
    assert sorted(stored) == [1, 3]  # the good ones were handled, not dead-lettered


def test_batch_failures_keyed_by_something_else_fail_the_whole_batch(
    kafka_bootstrap: str, new_topic: TopicFactory, kind: str
) -> None:
    topic = new_topic(1)
    produce(kafka_bootstrap, topic, [b"a", b"b"])
    calls: list[int] = []
    app = App(f"g-{topic}")

    @app.handler(
        topic,
        batch=BatchPolicy(max_size=10, max_wait=0.2),
        codec="raw",
        retries=1,
        backoff=Backoff(initial=0.01, max=0.05),
    )
    @of_kind(kind)
    def handle(messages: list[Message[Any]]) -> None:
        calls.append(len(messages))
        if len(calls) == 1:
            raise BatchFailures({0: ValueError("keyed by index, not by message")})

    with running(app, make_settings(kafka_bootstrap)):
        wait_until(
            lambda: committed(kafka_bootstrap, app.name, topic, 1) == {0: 2},
            30,
            "both finished after the retry",
        )
    # Not finished on the first call: both were run again.
    assert calls[:2] == [2, 2]

"""Payloads and producing against the real broker: typed handlers, codecs, the producer,
handler outputs and `kafkaworker produce`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from pydantic import BaseModel

from kafkaworker import App, Message, ProduceError, Producer
from kafkaworker.cli import cli
from tests.conftest import TopicFactory
from tests.support import (
    committed,
    end_offsets,
    make_settings,
    of_kind,
    produce,
    read_topic,
    running,
    wait_until,
)
from tests.unit.test_murmur2 import java_partition

pytestmark = pytest.mark.kafka


class Order(BaseModel):
    id: int
    quantity: int
    sku: str


def test_a_handler_typed_with_a_model_gets_it_validated_and_invalid_ones_go_to_the_dlq(
    kafka_bootstrap: str, new_topic: TopicFactory, kind: str
) -> None:
    topic = new_topic(1)
    dlq = f"{topic}.dlq"
    produce(
        kafka_bootstrap,
        topic,
        [
            b'{"id": 1, "quantity": 2, "sku": "A"}',
            b'{"id": 2, "quantity": "many", "sku": "B"}',
            b'{"id": 3, "quantity": 1, "sku": "C"}',
        ],
    )
    received: list[Order] = []
    app = App(f"g-{topic}")

    @app.handler(topic, dlq=dlq, retries=3)
    @of_kind(kind)
    def handle(order: Order) -> None:
        received.append(order)

    with running(app, make_settings(kafka_bootstrap)):
        (record,) = read_topic(kafka_bootstrap, dlq, 1)
        wait_until(
            lambda: committed(kafka_bootstrap, app.name, topic, 1) == {0: 3},
            30,
            "all three finished",
        )
    assert received == [Order(id=1, quantity=2, sku="A"), Order(id=3, quantity=1, sku="C")]
    kw = {k: v.decode() for k, v in record.headers() if k.startswith("kw.")}
    assert kw["kw.attempts"] == "1"  # validation errors are fatal: no retries
    assert kw["kw.error.type"].endswith("ValidationError")
    assert "quantity" in kw["kw.error.message"]  # the field that failed
    assert record.value() == b'{"id": 2, "quantity": "many", "sku": "B"}'


def test_message_of_a_model_validates_the_value(
    kafka_bootstrap: str, new_topic: TopicFactory, kind: str
) -> None:
    topic = new_topic(1)
    produce(kafka_bootstrap, topic, [b'{"id": 5, "quantity": 1, "sku": "Z"}'])
    received: list[tuple[int, Order]] = []
    app = App(f"g-{topic}")

    @app.handler(topic)
    @of_kind(kind)
    def handle(msg: Message[Order]) -> None:
        received.append((msg.offset, msg.value))

    with running(app, make_settings(kafka_bootstrap)):
        wait_until(lambda: received, 30, "the message")
    assert received == [(0, Order(id=5, quantity=1, sku="Z"))]


def test_producer_codecs_round_trip_through_the_broker(
    kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    topic = new_topic(1)
    producer = Producer(make_settings(kafka_bootstrap))
    try:
        producer.send_sync(topic, {"a": [1, 2]})  # JSON by default
        producer.send_sync(topic, Order(id=1, quantity=1, sku="Q"))  # models as JSON
        producer.send_sync(topic, "zürich", codec="text")
        producer.send_sync(topic, b"\x00\xff")  # bytes as they are
        producer.send_sync(topic, None, key="k")  # a tombstone
        assert producer.ping()
    finally:
        producer.close()
    values = [r.value() for r in read_topic(kafka_bootstrap, topic, 5)]
    assert values == [
        b'{"a":[1,2]}',
        b'{"id":1,"quantity":1,"sku":"Q"}',
        "zürich".encode(),
        b"\x00\xff",
        None,
    ]


def test_keys_land_on_the_partition_the_java_client_would_choose(
    kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    topic = new_topic(7)
    producer = Producer(make_settings(kafka_bootstrap))
    keys = [f"customer-{i}".encode() for i in range(200)]
    try:
        records = [producer.send(topic, b"x", key=key) for key in keys]
        placed = {r.result(30).key(): r.result(30).partition() for r in records}
    finally:
        producer.close()
    assert placed == {key: java_partition(key, 7) for key in keys}


def test_send_sync_raises_on_a_topic_that_does_not_exist(kafka_bootstrap: str) -> None:
    settings = make_settings(
        kafka_bootstrap,
        kafka={
            "bootstrap_servers": kafka_bootstrap,
            "producer": {"topic.metadata.propagation.max.ms": 1000},
        },
    )
    producer = Producer(settings)
    started = time.monotonic()
    try:
        with pytest.raises(ProduceError, match=r"record for 'no-such-topic-x' .* not delivered"):
            producer.send_sync("no-such-topic-x", {"a": 1}, timeout=20)
    finally:
        producer.close(timeout=1)
    assert time.monotonic() - started < 20


def test_handler_outputs_are_produced_with_the_input_key(
    kafka_bootstrap: str, new_topic: TopicFactory, kind: str
) -> None:
    topic, out = new_topic(1), new_topic(1, prefix="out")
    dlq = f"{topic}.dlq"
    produce(
        kafka_bootstrap,
        topic,
        [b'"one"', b'"list"', b'"gen"', b'"none"', b'"bad"'],
        keys=[b"k1", b"k2", b"k3", b"k4", b"k5"],
    )
    app = App(f"g-{topic}")

    @app.handler(topic, output=out, dlq=dlq)
    @of_kind(kind)
    def handle(msg: Message[str]) -> Any:
        if msg.value == "one":
            return {"n": 1}
        if msg.value == "list":
            return [{"n": 2}, {"n": 3}]
        if msg.value == "gen":
            return (Order(id=i, quantity=1, sku="G") for i in range(2))
        if msg.value == "bad":
            return object()
        return None

    with running(app, make_settings(kafka_bootstrap)):
        wait_until(
            lambda: committed(kafka_bootstrap, app.name, topic, 1) == {0: 5},
            30,
            "every input finished",
        )
    outputs = [(r.key(), r.value()) for r in read_topic(kafka_bootstrap, out, 5)]
    assert outputs == [
        (b"k1", b'{"n":1}'),
        (b"k2", b'{"n":2}'),
        (b"k2", b'{"n":3}'),
        (b"k3", b'{"id":0,"quantity":1,"sku":"G"}'),
        (b"k3", b'{"id":1,"quantity":1,"sku":"G"}'),
    ]
    (dead,) = read_topic(kafka_bootstrap, dlq, 1)
    kw = {k: v.decode() for k, v in dead.headers() if k.startswith("kw.")}
    assert kw["kw.error.message"].startswith("cannot encode a object with the json codec")


def test_produce_command_sends_one_message_per_line(
    kafka_bootstrap: str,
    new_topic: TopicFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    topic = new_topic(1)
    env = {"KAFKAWORKER_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap, "KAFKAWORKER_SETTINGS": ""}
    ok = CliRunner().invoke(
        cli,
        ["produce", topic, "--key", "k", "--header", "source=cli"],
        input='{"a": 1}\n{"b": 2}\n',
        env=env,
    )
    assert ok.exit_code == 0, ok.output
    records = read_topic(kafka_bootstrap, topic, 2)
    assert [(r.key(), r.value(), r.headers()) for r in records] == [
        (b"k", b'{"a": 1}', [("source", b"cli")]),
        (b"k", b'{"b": 2}', [("source", b"cli")]),
    ]

    bad = CliRunner().invoke(
        cli, ["produce", topic], input='{"c": 3}\nnot json\n{"d": 4}\n', env=env
    )
    assert bad.exit_code == 1
    assert bad.stdout == f"produced 1 message(s) to {topic}\n"  # the summary: stdout
    # The input's line alone: not orjson's own "line 1 column 1" beside it.
    assert bad.stderr.startswith("Error: line 2 is not JSON: ")
    assert bad.stderr.endswith(" at column 1; or use --codec text; nothing from it on was sent\n")
    assert "line 1" not in bad.stderr
    assert end_offsets(kafka_bootstrap, topic, 1) == {0: 3}


def test_produce_takes_keys_and_headers_per_line_and_skips_blank_lines(
    kafka_bootstrap: str,
    new_topic: TopicFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 30, item 7: keys and headers per line, as kafka-console-producer's parse.key and
    parse.headers; a blank line (a trailing newline, a gap) is skipped, not an error."""
    monkeypatch.chdir(tmp_path)
    env = {"KAFKAWORKER_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap, "KAFKAWORKER_SETTINGS": ""}

    def produce_lines(topic: str, text: str, *options: str) -> Any:
        return CliRunner().invoke(cli, ["produce", topic, *options], input=text, env=env)

    by_separator = new_topic(1)
    sent = produce_lines(
        by_separator,
        'trace:t1,source:cli\tcustomer-1\t{"id": 1}\n\n\tcustomer-2\t{"id": 2}\n   \n',
        "--parse-headers",
        "--key-separator",
        "TAB",
        "--header",
        "via=produce",
    )
    assert sent.exit_code == 0, sent.output
    assert sent.stdout == f"produced 2 message(s) to {by_separator}\n"
    records = read_topic(kafka_bootstrap, by_separator, 2)
    assert [(r.key(), r.value(), r.headers()) for r in records] == [
        (
            b"customer-1",
            b'{"id": 1}',
            [("via", b"produce"), ("trace", b"t1"), ("source", b"cli")],
        ),
        (b"customer-2", b'{"id": 2}', [("via", b"produce")]),
    ]

    by_field = new_topic(1)
    sent = produce_lines(by_field, '{"id": 7, "c": "a"}\n{"id": "x-8"}\n', "--key-field", "id")
    assert sent.exit_code == 0, sent.output
    records = read_topic(kafka_bootstrap, by_field, 2)
    assert [(r.key(), r.value()) for r in records] == [
        (b"7", b'{"id": 7, "c": "a"}'),
        (b"x-8", b'{"id": "x-8"}'),
    ]
    missing = produce_lines(by_field, '{"id": 9}\n{"sku": 1}\n', "--key-field", "id")
    assert missing.exit_code == 1
    assert missing.stdout == f"produced 1 message(s) to {by_field}\n"
    assert missing.stderr == (
        "Error: line 2 has no field 'id' for --key-field; nothing from it on was sent\n"
    )
    no_key = produce_lines(by_separator, 'k1|{"id": 1}\nno key here\n', "--key-separator", "|")
    assert no_key.exit_code == 1
    assert "Error: line 2 has no key separator '|'" in no_key.stderr
    both = produce_lines(by_field, "{}\n", "--key", "k", "--key-field", "id")
    assert both.exit_code == 2 and "give one of --key, --key-separator, --key-field" in both.output


@pytest.mark.parametrize("compression", ["gzip", "snappy", "lz4", "zstd"])
def test_compressed_batches_round_trip(
    kafka_bootstrap: str, new_topic: TopicFactory, compression: str
) -> None:
    topic = new_topic(1)
    settings = make_settings(
        kafka_bootstrap,
        kafka={
            "bootstrap_servers": kafka_bootstrap,
            "producer": {"compression.type": compression, "linger.ms": 20},
        },
    )
    producer = Producer(settings)
    try:
        futures = [producer.send(topic, {"n": i, "pad": "x" * 200}) for i in range(50)]
        for future in futures:
            future.result(30)
    finally:
        producer.close()
    values = [orjson.loads(r.value())["n"] for r in read_topic(kafka_bootstrap, topic, 50)]
    assert values == list(range(50))

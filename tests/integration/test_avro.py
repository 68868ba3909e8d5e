"""Avro through a real Schema Registry (Apicurio, the schema_registry fixture) over the real
broker: wire format, evolution, bad records. (confluent-kafka's mock:// registry is for unit
tests only: it knows neither HTTP, nor compatibility rules, nor failures.)"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from pydantic import BaseModel

from kafkaworker import App, ConfigError, Message, Producer
from kafkaworker.handlers import resolve_specs
from kafkaworker.runtime.runner import Runner
from kafkaworker.serialization.avro import AvroCodec
from kafkaworker.serialization.registry import registry_client
from kafkaworker.testing.registry import SchemaRegistry
from tests.conftest import TopicFactory
from tests.support import make_settings, produce, read_topic, running, wait_until

pytestmark = pytest.mark.kafka

V1 = orjson.dumps(
    {
        "type": "record",
        "name": "Order",
        "fields": [{"name": "id", "type": "int"}, {"name": "sku", "type": "string"}],
    }
).decode()
# V2 adds a field with a default: a V2 reader must read V1 records.
V2 = orjson.dumps(
    {
        "type": "record",
        "name": "Order",
        "fields": [
            {"name": "id", "type": "int"},
            {"name": "sku", "type": "string"},
            {"name": "quantity", "type": "int", "default": 1},
        ],
    }
).decode()


class OrderV2(BaseModel):
    id: int
    sku: str
    quantity: int


@pytest.fixture
def registry(schema_registry: SchemaRegistry) -> SchemaRegistryClient:
    """A client of the session's registry, with kafkaworker's defaults (a 10 s timeout)."""
    return registry_client({"url": schema_registry.url})


def test_v1_records_are_read_with_a_v2_reader_schema_into_a_model(
    kafka_bootstrap: str, new_topic: TopicFactory, registry: SchemaRegistryClient
) -> None:
    topic = new_topic(1)
    producer = Producer(make_settings(kafka_bootstrap))
    try:
        writer = AvroCodec(registry, writer_schema=V1)
        producer.send_sync(topic, {"id": 1, "sku": "A"}, codec=writer)
        producer.send_sync(topic, {"id": 2, "sku": "B"}, codec=writer)
    finally:
        producer.close()
    (first,) = read_topic(kafka_bootstrap, topic, 1)
    assert first.value()[:1] == b"\x00"  # Confluent wire format: magic byte, then the id
    received: list[OrderV2] = []
    app = App(f"g-{topic}")

    @app.handler(topic, codec=AvroCodec(registry, reader_schema=V2))
    def handle(order: OrderV2) -> None:
        received.append(order)

    with running(app, make_settings(kafka_bootstrap)):
        wait_until(lambda: len(received) == 2, 30, "both records")
    assert received == [OrderV2(id=1, sku="A", quantity=1), OrderV2(id=2, sku="B", quantity=1)]


def test_a_record_with_a_wrong_magic_byte_goes_to_the_dlq_after_one_attempt(
    kafka_bootstrap: str, new_topic: TopicFactory, registry: SchemaRegistryClient
) -> None:
    topic = new_topic(1)
    dlq = f"{topic}.dlq"
    produce(kafka_bootstrap, topic, [b"\x07\x00\x00\x00\x01\x02A"])
    app = App(f"g-{topic}")
    app.schema_registry = registry
    calls: list[int] = []

    @app.handler(topic, codec="avro", dlq=dlq, retries=3)
    def handle(msg: Message[Any]) -> None:
        calls.append(msg.attempt)
        _ = msg.value

    with running(app, make_settings(kafka_bootstrap)):
        (record,) = read_topic(kafka_bootstrap, dlq, 1)
    assert calls == [1]
    assert record.value() == b"\x07\x00\x00\x00\x01\x02A"
    kw = {k: v.decode() for k, v in record.headers() if k.startswith("kw.")}
    assert kw["kw.error.type"] == "kafkaworker.errors.DeserializationError"
    assert "magic byte" in kw["kw.error.message"]


def test_codec_avro_by_name_decodes_to_dicts_with_the_writer_schema(
    kafka_bootstrap: str,
    new_topic: TopicFactory,
    registry: SchemaRegistryClient,
    schema_registry: SchemaRegistry,
) -> None:
    topic = new_topic(1)
    producer = Producer(make_settings(kafka_bootstrap))
    try:
        producer.send_sync(
            topic, {"id": 9, "sku": "Z"}, codec=AvroCodec(registry, writer_schema=V1)
        )
    finally:
        producer.close()
    received: list[Any] = []
    app = App(f"g-{topic}")

    @app.handler(topic, codec="avro")
    def handle(msg: Message[Any]) -> None:
        received.append(msg.value)

    # The worker's own client, from the settings: it shares nothing with the producer's.
    settings = make_settings(kafka_bootstrap, schema_registry={"url": schema_registry.url})
    with running(app, settings):
        wait_until(lambda: received, 30, "the record")
    assert received == [{"id": 9, "sku": "Z"}]


def test_codec_avro_without_a_registry_is_a_one_line_error(
    kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    topic = new_topic(1)
    app = App(f"g-{topic}")

    @app.handler(topic, codec="avro")
    def handle(msg: Message[Any]) -> None:
        pass

    settings = make_settings(kafka_bootstrap)
    with pytest.raises(ConfigError) as error:
        Runner(app, settings, resolve_specs(app, settings)).run()
    assert str(error.value) == (
        "handler 'handle' uses codec 'avro' but schema_registry.url is not set: add it to the "
        "settings (KAFKAWORKER_SCHEMA_REGISTRY__URL)"
    )

"""codec="json_schema" and codec="protobuf" by name, from the settings' schema_registry, in a
running worker against the real broker and registry: auto.register.schemas and
subject.name.strategy from schema_registry.config, the Protobuf class from the signature.
And on every path that writes (issue 30, item 15): Producer(settings), app.producer in a
handler, a handler's outputs (`kafkaworker produce`: test_schema_codecs.py)."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from pydantic import BaseModel

from kafkaworker import App, ProduceError, Producer, load_settings
from kafkaworker.serialization.json_schema import JsonSchemaCodec
from kafkaworker.serialization.protobuf import ProtobufCodec
from kafkaworker.serialization.registry import registry_client, schema_id
from kafkaworker.testing.registry import SchemaRegistry
from tests.conftest import TopicFactory
from tests.integration.registry_support import generate_protos
from tests.support import make_settings, produce, read_topic, running, wait_until

pytestmark = pytest.mark.kafka


class Order(BaseModel):
    id: int
    sku: str


@pytest.fixture(scope="module")
def protos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ModuleType]:
    return generate_protos(tmp_path_factory.mktemp("protos"))


def test_named_json_schema_and_protobuf_codecs_from_the_settings(
    kafka_bootstrap: str,
    new_topic: TopicFactory,
    schema_registry: SchemaRegistry,
    protos: dict[str, ModuleType],
    tmp_path: Path,
) -> None:
    json_topic, proto_topic = new_topic(1), new_topic(1)
    order_type = protos["orders_v1"].Order
    client = registry_client({"url": schema_registry.url})
    producer = Producer(make_settings(kafka_bootstrap))
    try:
        producer.send_sync(json_topic, Order(id=1, sku="J"), codec=JsonSchemaCodec(client))
        producer.send_sync(proto_topic, order_type(id=2, sku="P"), codec=ProtobufCodec(client))
    finally:
        producer.close()
    orders: list[Order] = []
    messages: list[Any] = []
    app = App(f"g-{json_topic}")

    @app.handler(json_topic, codec="json_schema")
    def handle_json(order: Order) -> None:
        orders.append(order)

    def handle_proto(order: Any) -> None:
        messages.append(order)

    handle_proto.__annotations__["order"] = order_type  # generated at test time
    app.handler(proto_topic, codec="protobuf")(handle_proto)
    settings = make_settings(
        kafka_bootstrap,
        schema_registry={
            "url": schema_registry.url,
            "config": {"auto.register.schemas": False, "subject.name.strategy": "record"},
        },
    )
    with running(app, settings) as runner:
        wait_until(lambda: orders and messages, 30, "both records")
        codecs = {h.spec.name: h.codec for h in runner.handlers}
    assert orders == [Order(id=1, sku="J")]
    assert [(m.id, m.sku) for m in messages] == [(2, "P")]
    named = codecs["handle_proto"]
    assert isinstance(named, ProtobufCodec)
    assert (named.auto_register, named.subject_strategy) == (False, "record")


def test_producer_of_the_settings_writes_registry_codecs_by_name(
    kafka_bootstrap: str,
    new_topic: TopicFactory,
    schema_registry: SchemaRegistry,
    protos: dict[str, ModuleType],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The issue's own steps: the registry named by the environment, load_settings()."""
    json_topic, proto_topic, avro_topic = new_topic(1), new_topic(1), new_topic(1)
    monkeypatch.delenv("KAFKAWORKER_SETTINGS", raising=False)
    monkeypatch.setenv("KAFKAWORKER_KAFKA__BOOTSTRAP_SERVERS", kafka_bootstrap)
    monkeypatch.setenv("KAFKAWORKER_SCHEMA_REGISTRY__URL", schema_registry.url)
    order_type = protos["orders_v1"].Order
    producer = Producer(load_settings())
    try:
        producer.send_sync(json_topic, Order(id=1, sku="J"), codec="json_schema")
        producer.send_sync(proto_topic, order_type(id=2, sku="P"), codec="protobuf")
        # Avro by name has the registry too; what it lacks is a writer schema, and it says so.
        with pytest.raises(ProduceError, match="AvroCodec needs writer_schema= to encode"):
            producer.send_sync(avro_topic, {"id": 3}, codec="avro")
    finally:
        producer.close()
    client = registry_client({"url": schema_registry.url})
    [json_record] = read_topic(kafka_bootstrap, json_topic, 1)
    assert schema_id(json_record.value()) is not None  # framed: written through the registry
    assert JsonSchemaCodec(client).decode(json_record.value(), []) == {"id": 1, "sku": "J"}
    [proto_record] = read_topic(kafka_bootstrap, proto_topic, 1)
    decoded = ProtobufCodec(client, order_type).decode(proto_record.value(), [])
    assert (decoded.id, decoded.sku) == (2, "P")


def test_app_producer_and_outputs_write_registry_codecs_by_name(
    kafka_bootstrap: str, new_topic: TopicFactory, schema_registry: SchemaRegistry
) -> None:
    source, sent, output = new_topic(1), new_topic(1), new_topic(1)
    app = App(f"g-{source}")

    @app.handler(source, output=output, codec="json_schema")
    def handle(order: Order) -> Order:
        # app.producer: the run's producer, the run's settings' registry.
        app.producer.send_sync(sent, Order(id=order.id * 10, sku="S"), codec="json_schema")
        return Order(id=order.id + 1, sku="O")  # the output, in the handler's codec

    client = registry_client({"url": schema_registry.url})
    codec = JsonSchemaCodec(client)
    produce(kafka_bootstrap, source, [codec.encode_for(source, Order(id=1, sku="I"))])
    settings = make_settings(kafka_bootstrap, schema_registry={"url": schema_registry.url})
    with running(app, settings):
        [by_producer] = read_topic(kafka_bootstrap, sent, 1)
        [by_output] = read_topic(kafka_bootstrap, output, 1)
    for record in (by_producer, by_output):
        assert schema_id(record.value()) is not None
    assert codec.decode(by_producer.value(), []) == {"id": 10, "sku": "S"}
    assert codec.decode(by_output.value(), []) == {"id": 2, "sku": "O"}


def test_a_producer_without_a_registry_says_which_setting_names_one() -> None:
    producer = Producer(make_settings("127.0.0.1:9"))
    try:
        with pytest.raises(ProduceError) as error:
            producer.send("t", Order(id=1, sku="x"), codec="json_schema")
    finally:
        producer.close(timeout=0)
    assert str(error.value) == (
        "the 'json_schema' codec needs a Schema Registry: set schema_registry.url in the "
        "settings (KAFKAWORKER_SCHEMA_REGISTRY__URL), or pass a codec object"
    )

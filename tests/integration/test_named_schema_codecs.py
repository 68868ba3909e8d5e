"""codec="json_schema" and codec="protobuf" by name, from the settings' schema_registry, in a
running worker against the real broker and registry: auto.register.schemas and
subject.name.strategy from schema_registry.config, the Protobuf class from the signature."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from pydantic import BaseModel

from kafkaworker import App, Producer
from kafkaworker.serialization.json_schema import JsonSchemaCodec
from kafkaworker.serialization.protobuf import ProtobufCodec
from kafkaworker.serialization.registry import registry_client
from kafkaworker.testing.registry import SchemaRegistry
from tests.conftest import TopicFactory
from tests.integration.registry_support import generate_protos
from tests.support import make_settings, running, wait_until

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

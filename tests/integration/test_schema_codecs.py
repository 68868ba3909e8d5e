"""The Schema Registry codecs (avro, json_schema, protobuf) against the real broker and a real
registry (Apicurio; the schema_registry fixture): round trips, evolution, a refusal under
BACKWARD, Protobuf references, subject name strategies, caching counted at the HTTP level,
bad records, and the registry down at start-up and killed mid-run."""

from __future__ import annotations

import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from confluent_kafka.schema_registry import Schema, SchemaReference, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.schema_registry.protobuf import ProtobufDeserializer
from confluent_kafka.schema_registry.serde import SchemaId
from confluent_kafka.serialization import SerializationError
from pydantic import BaseModel, ConfigDict

from kafkaworker import App, Backoff, Message, ProduceError, Producer, StartupError
from kafkaworker.cli import cli
from kafkaworker.errors import SchemaRefused
from kafkaworker.handlers import resolve_specs
from kafkaworker.runtime.runner import Runner
from kafkaworker.serialization.avro import AvroCodec
from kafkaworker.serialization.json_schema import JsonSchemaCodec
from kafkaworker.serialization.named import runtime_codecs
from kafkaworker.serialization.protobuf import ProtobufCodec, payload_start
from kafkaworker.serialization.registry import registry_client
from kafkaworker.testing.jvm import free_port
from kafkaworker.testing.registry import SchemaRegistry
from tests.conftest import TopicFactory
from tests.integration.registry_support import PROTOS, CountingProxy, generate_protos, send
from tests.support import end_offsets, make_settings, produce, read_topic, running, wait_until

pytestmark = pytest.mark.kafka


class OrderV1(BaseModel):
    id: int
    sku: str


class OrderV2(BaseModel):
    """OrderV1 with a field added, with a default: a V2 reader reads V1 records."""

    id: int
    sku: str
    quantity: int = 1


@pytest.fixture
def registry(schema_registry: SchemaRegistry) -> SchemaRegistryClient:
    return registry_client({"url": schema_registry.url})


@pytest.fixture(scope="module")
def protos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ModuleType]:
    return generate_protos(tmp_path_factory.mktemp("protos"))


def _kw_headers(record: Any) -> dict[str, str]:
    return {k: v.decode() for k, v in record.headers() if k.startswith("kw.")}


# --- JSON Schema ---------------------------------------------------------------------------


def test_json_schema_round_trip_registers_the_models_schema(
    kafka_bootstrap: str,
    new_topic: TopicFactory,
    registry: SchemaRegistryClient,
    schema_registry: SchemaRegistry,
) -> None:
    topic = new_topic(1)
    send(
        kafka_bootstrap,
        topic,
        [OrderV1(id=1, sku="A"), OrderV1(id=2, sku="B")],
        JsonSchemaCodec(registry),
    )
    (first,) = read_topic(kafka_bootstrap, topic, 1)
    # Confluent wire format: magic byte 0, the 4-byte schema id, then the JSON document.
    schema_id = int.from_bytes(first.value()[1:5], "big")
    assert first.value()[:1] == b"\x00"
    assert orjson.loads(first.value()[5:]) == {"id": 1, "sku": "A"}
    registered = registry.get_latest_version(f"{topic}-value")
    assert registered.schema_id == schema_id
    assert orjson.loads(registered.schema.schema_str) == OrderV1.model_json_schema()

    received: list[OrderV1] = []
    app = App(f"g-{topic}")
    reader = registry_client({"url": schema_registry.url})  # its own cache: asks the registry

    @app.handler(topic, codec=JsonSchemaCodec(reader))
    def handle(order: OrderV1) -> None:
        received.append(order)

    with running(app, make_settings(kafka_bootstrap)):
        wait_until(lambda: len(received) == 2, 30, "both records")
    assert received == [OrderV1(id=1, sku="A"), OrderV1(id=2, sku="B")]


def test_json_schema_v1_records_are_read_by_a_v2_model(
    kafka_bootstrap: str, new_topic: TopicFactory, registry: SchemaRegistryClient
) -> None:
    topic = new_topic(1)
    codec = JsonSchemaCodec(registry)
    send(
        kafka_bootstrap, topic, [OrderV1(id=1, sku="A"), OrderV2(id=2, sku="B", quantity=5)], codec
    )
    # Two writer schemas, two versions of one subject.
    assert len(registry.get_versions(f"{topic}-value")) == 2
    received: list[OrderV2] = []
    app = App(f"g-{topic}")

    @app.handler(topic, codec=codec)
    def handle(order: OrderV2) -> None:
        received.append(order)

    with running(app, make_settings(kafka_bootstrap)):
        wait_until(lambda: len(received) == 2, 30, "both records")
    assert received == [OrderV2(id=1, sku="A", quantity=1), OrderV2(id=2, sku="B", quantity=5)]


def test_a_record_that_fails_its_writers_schema_goes_to_the_dlq_after_one_attempt(
    kafka_bootstrap: str, new_topic: TopicFactory, registry: SchemaRegistryClient
) -> None:
    topic = new_topic(1)
    dlq = f"{topic}.dlq"
    good = JsonSchemaCodec(registry).encode_for(topic, OrderV1(id=1, sku="A"))
    # The registered id, a document its schema refuses (id must be an integer).
    bad = good[:5] + b'{"id": "one", "sku": "A"}'
    produce(kafka_bootstrap, topic, [bad])
    calls: list[int] = []
    app = App(f"g-{topic}")

    @app.handler(topic, codec=JsonSchemaCodec(registry), dlq=dlq, retries=3)
    def handle(msg: Message[Any]) -> None:
        calls.append(msg.attempt)
        _ = msg.value

    with running(app, make_settings(kafka_bootstrap)):
        (record,) = read_topic(kafka_bootstrap, dlq, 1)
    assert calls == [1]
    assert record.value() == bad  # the raw bytes, as they were
    kw = _kw_headers(record)
    assert kw["kw.error.type"] == "kafkaworker.errors.DeserializationError"
    assert "with the json_schema codec" in kw["kw.error.message"]
    assert "'one' is not of type 'integer'" in kw["kw.error.message"]


class ClosedOrderV1(BaseModel):
    """A closed content model (additionalProperties: false): see the BACKWARD tests."""

    model_config = ConfigDict(extra="forbid")
    id: int
    sku: str


class ClosedOrderV2(ClosedOrderV1):
    quantity: int = 1


class OrderIdAsText(BaseModel):
    """OrderV1 with id's type changed: V1 records do not fit it."""

    id: str
    sku: str


def _refusal(
    bootstrap: str, topic: str, value: BaseModel, codec: JsonSchemaCodec
) -> SchemaRegistryError:
    """The registry's HTTP error under the ProduceError that sending `value` raises."""
    producer = Producer(make_settings(bootstrap))
    try:
        with pytest.raises(ProduceError) as error:
            producer.send_sync(topic, value, codec=codec)
    finally:
        producer.close()
    message = str(error.value)
    assert "\n" not in message
    assert f"subject '{topic}-value'" in message
    assert "BACKWARD" in message
    refused = error.value.__cause__
    assert isinstance(refused, SchemaRefused)
    http = refused.__cause__
    assert isinstance(http, SchemaRegistryError)
    return http


@pytest.mark.parametrize(
    "incompatible",
    [OrderIdAsText(id="2", sku="B"), OrderV2(id=2, sku="B")],
    ids=["a-property-type-changed", "a-property-added-to-an-open-model"],
)
def test_json_schema_an_incompatible_change_is_refused_under_backward(
    kafka_bootstrap: str,
    new_topic: TopicFactory,
    registry: SchemaRegistryClient,
    incompatible: BaseModel,
) -> None:
    """A pydantic model's schema is an open content model (extra properties allowed), so under
    BACKWARD even a defaulted new field is refused: V1 records may carry any property, of any
    type, under the new name. Closed models may gain one (the next test)."""
    topic = new_topic(1)
    subject = f"{topic}-value"
    codec = JsonSchemaCodec(registry)
    send(kafka_bootstrap, topic, [OrderV1(id=1, sku="A")], codec)
    # Apicurio's default is NONE (Confluent's BACKWARD): the test sets the rule it tests.
    registry.set_compatibility(subject, "BACKWARD")
    http = _refusal(kafka_bootstrap, topic, incompatible, codec)
    assert (http.http_status_code, http.error_code) == (409, 409)
    assert len(registry.get_versions(subject)) == 1
    # The refusal leaves the registered schema usable.
    send(kafka_bootstrap, topic, [OrderV1(id=3, sku="C")], codec)
    assert end_offsets(kafka_bootstrap, topic, 1) == {0: 2}


def test_json_schema_v2_closed_model_is_accepted_under_backward_and_reads_v1_records(
    kafka_bootstrap: str,
    new_topic: TopicFactory,
    registry: SchemaRegistryClient,
    schema_registry: SchemaRegistry,
) -> None:
    topic = new_topic(1)
    subject = f"{topic}-value"
    codec = JsonSchemaCodec(registry)
    send(kafka_bootstrap, topic, [ClosedOrderV1(id=1, sku="A")], codec)
    registry.set_compatibility(subject, "BACKWARD")
    send(kafka_bootstrap, topic, [ClosedOrderV2(id=2, sku="B", quantity=4)], codec)
    versions = [registry.get_version(subject, v) for v in registry.get_versions(subject)]
    assert [orjson.loads(v.schema.schema_str or "")["additionalProperties"] for v in versions] == [
        False,
        False,
    ]
    assert [orjson.loads(v.schema.schema_str or "")["title"] for v in versions] == [
        "ClosedOrderV1",
        "ClosedOrderV2",
    ]
    received: list[ClosedOrderV2] = []
    app = App(f"g-{topic}")
    reader = registry_client({"url": schema_registry.url})  # fetches both writer schemas

    @app.handler(topic, codec=JsonSchemaCodec(reader))
    def handle(order: ClosedOrderV2) -> None:
        received.append(order)

    with running(app, make_settings(kafka_bootstrap)):
        wait_until(lambda: len(received) == 2, 30, "both records")
    assert received == [
        ClosedOrderV2(id=1, sku="A", quantity=1),
        ClosedOrderV2(id=2, sku="B", quantity=4),
    ]


MONEY_SCHEMA = {
    "title": "Money",
    "type": "object",
    "properties": {"units": {"type": "integer"}, "currency": {"type": "string"}},
    "required": ["units", "currency"],
}
PRICED_ORDER_SCHEMA = {
    "title": "PricedOrder",
    "type": "object",
    "properties": {"id": {"type": "integer"}, "total": {"$ref": "money.json"}},
    "required": ["id", "total"],
}


def test_json_schema_references_round_trip_and_validate_through_the_referenced_schema(
    kafka_bootstrap: str,
    new_topic: TopicFactory,
    registry: SchemaRegistryClient,
    schema_registry: SchemaRegistry,
) -> None:
    topic = new_topic(1)
    dlq = f"{topic}.dlq"
    money_subject = f"{topic}-money"
    registry.register_schema(money_subject, Schema(orjson.dumps(MONEY_SCHEMA).decode(), "JSON"))
    writer = Schema(
        orjson.dumps(PRICED_ORDER_SCHEMA).decode(),
        "JSON",
        [SchemaReference("money.json", money_subject, 1)],
    )
    codec = JsonSchemaCodec(registry, schema=writer)
    order = {"id": 1, "total": {"units": 1250, "currency": "EUR"}}
    send(kafka_bootstrap, topic, [order], codec)
    latest = registry.get_latest_version(f"{topic}-value")
    assert [(r.name, r.subject, r.version) for r in latest.schema.references or []] == [
        ("money.json", money_subject, 1)
    ]
    # The writer validates through the reference: units must be an integer.
    with pytest.raises(SerializationError, match="'many' is not of type 'integer'"):
        codec.encode_for(topic, {"id": 2, "total": {"units": "many", "currency": "EUR"}})
    # A record written with the id but whose referenced part does not fit it.
    (good,) = read_topic(kafka_bootstrap, topic, 1)
    bad = good.value()[:5] + b'{"id": 3, "total": {"units": "x", "currency": "EUR"}}'
    produce(kafka_bootstrap, topic, [bad])

    received: list[Any] = []
    app = App(f"g-{topic}")
    reader = registry_client({"url": schema_registry.url})  # resolves the reference itself

    @app.handler(topic, codec=JsonSchemaCodec(reader), dlq=dlq, retries=3)
    def handle(msg: Message[Any]) -> None:
        received.append(msg.value)

    with running(app, make_settings(kafka_bootstrap)):
        (dead,) = read_topic(kafka_bootstrap, dlq, 1)
        wait_until(lambda: received, 30, "the good record")
    assert received == [order]
    assert dead.value() == bad
    kw = _kw_headers(dead)
    assert kw["kw.error.type"] == "kafkaworker.errors.DeserializationError"
    assert "'x' is not of type 'integer'" in kw["kw.error.message"]


# --- Protobuf ------------------------------------------------------------------------------


def test_protobuf_round_trip_registers_the_import_as_a_reference(
    kafka_bootstrap: str,
    new_topic: TopicFactory,
    registry: SchemaRegistryClient,
    schema_registry: SchemaRegistry,
    protos: dict[str, ModuleType],
) -> None:
    topic = new_topic(1)
    order_type = protos["orders_v1"].Order
    order = order_type(id=7, sku="P")
    order.total.units = 1250
    order.total.currency = "EUR"
    send(kafka_bootstrap, topic, [order], ProtobufCodec(registry))
    (record,) = read_topic(kafka_bootstrap, topic, 1)
    # Magic byte, schema id, then the message indexes: [0] (the file's first message) is one
    # zero byte.
    assert record.value()[:1] == b"\x00"
    assert record.value()[5:6] == b"\x00"
    latest = registry.get_latest_version(f"{topic}-value")
    assert [(ref.name, ref.subject) for ref in latest.schema.references] == [
        ("money.proto", "money.proto")
    ]
    assert "money.proto" in registry.get_subjects()

    received: list[Any] = []
    app = App(f"g-{topic}")
    reader = registry_client({"url": schema_registry.url})

    def handle(order: Any) -> None:
        received.append(order)

    # The class exists once the protos are generated (at test time), so the annotation is set
    # here; in an app it is `def handle(order: Order)`. The codec takes the class from it, as
    # codec="protobuf" does.
    handle.__annotations__["order"] = order_type
    app.handler(topic, codec=ProtobufCodec(reader))(handle)

    with running(app, make_settings(kafka_bootstrap)):
        wait_until(lambda: received, 30, "the record")
    assert received == [order]
    assert received[0].total.currency == "EUR"


def test_protobuf_a_field_added_v2_reader_reads_v1_records(
    kafka_bootstrap: str,
    new_topic: TopicFactory,
    registry: SchemaRegistryClient,
    protos: dict[str, ModuleType],
) -> None:
    topic = new_topic(1)
    v1, v2 = protos["orders_v1"].Order, protos["orders_v2"].Order
    codec = ProtobufCodec(registry)
    send(kafka_bootstrap, topic, [v1(id=1, sku="A"), v2(id=2, sku="B", quantity=3)], codec)
    received: list[Any] = []
    app = App(f"g-{topic}")

    @app.handler(topic, codec=ProtobufCodec(registry, v2))
    def handle(msg: Message[Any]) -> None:
        received.append(msg.value)

    with running(app, make_settings(kafka_bootstrap)):
        wait_until(lambda: len(received) == 2, 30, "both records")
    assert [(o.id, o.sku, o.quantity) for o in received] == [(1, "A", 0), (2, "B", 3)]


def test_protobuf_decodes_as_confluents_deserializer_with_one_request_per_schema_id(
    kafka_bootstrap: str,
    new_topic: TopicFactory,
    schema_registry: SchemaRegistry,
    protos: dict[str, ModuleType],
) -> None:
    """ProtobufCodec reads the first record of a schema id (and message indexes) with
    confluent-kafka's ProtobufDeserializer and parses the next ones straight into the class:
    the values are the deserializer's, V1 and V2 records interleaved, and a bad payload fails
    as in it."""
    topic = new_topic(1)
    v1, v2 = protos["orders_v1"].Order, protos["orders_v2"].Order
    writer = ProtobufCodec(registry_client({"url": schema_registry.url}))
    records = [
        writer.encode_for(topic, v1(id=i, sku="A") if i % 2 else v2(id=i, sku="B", quantity=i))
        for i in range(20)
    ]
    with CountingProxy(schema_registry.url).running() as proxy:
        codec = ProtobufCodec({"url": proxy.url}, v2)
        decoded = [codec.decode(record, []) for record in records]
        by_id = {path: n for (method, path), n in proxy.counts.items() if "/schemas/ids/" in path}
        assert sorted(by_id.values()) == [1, 1], proxy.counts
    reference = ProtobufDeserializer(
        v2,
        {"use.deprecated.format": False, "subject.name.strategy.type": "RECORD"},
        schema_registry_client=writer.registry,
    )
    assert decoded == [reference(record, None) for record in records]
    assert (decoded[1].id, decoded[1].quantity) == (1, 0)  # V1: the new field's zero value
    broken = records[2][:6] + b"\xff\xff"  # a known id and index, a payload cut short
    with pytest.raises(Exception) as ours:
        codec.decode(broken, [])
    with pytest.raises(Exception) as theirs:
        reference(broken, None)
    assert type(ours.value) is type(theirs.value)


@pytest.mark.parametrize("indexes", [[0], [1], [3, 1, 2], [200]])
def test_protobuf_payload_start_skips_the_message_indexes(indexes: list[int]) -> None:
    """payload_start against confluent-kafka's own framing of message indexes."""
    framed = SchemaId("PROTOBUF", 7, message_indexes=indexes).id_to_bytes()
    assert payload_start(framed + b"\x08\x01") == len(framed)
    assert payload_start(framed[:-1] + b"\x80") is None  # an index cut short
    assert payload_start(b"\x01" + framed[1:]) is None  # magic byte 1: not an id


# --- Registration: compatibility, strategies, auto_register --------------------------------

AVRO_V1 = orjson.dumps(
    {
        "type": "record",
        "name": "Order",
        "namespace": "kwtest",
        "fields": [{"name": "id", "type": "int"}],
    }
).decode()
# A new field without a default: V2 readers cannot read V1 records, refused under BACKWARD.
AVRO_V2_INCOMPATIBLE = orjson.dumps(
    {
        "type": "record",
        "name": "Order",
        "namespace": "kwtest",
        "fields": [{"name": "id", "type": "int"}, {"name": "quantity", "type": "int"}],
    }
).decode()


def test_an_incompatible_change_is_refused_under_backward_naming_subject_and_rule(
    kafka_bootstrap: str, new_topic: TopicFactory, registry: SchemaRegistryClient
) -> None:
    topic = new_topic(1)
    subject = f"{topic}-value"
    send(kafka_bootstrap, topic, [{"id": 1}], AvroCodec(registry, writer_schema=AVRO_V1))
    # Apicurio's default is NONE (Confluent's BACKWARD): the test sets the rule it tests.
    registry.set_compatibility(subject, "BACKWARD")
    producer = Producer(make_settings(kafka_bootstrap))
    try:
        with pytest.raises(ProduceError) as error:
            producer.send_sync(
                topic,
                {"id": 2, "quantity": 1},
                codec=AvroCodec(registry, writer_schema=AVRO_V2_INCOMPATIBLE),
            )
    finally:
        producer.close()
    refused = error.value.__cause__
    assert isinstance(refused, SchemaRefused)
    http = refused.__cause__
    assert isinstance(http, SchemaRegistryError)
    assert (http.http_status_code, http.error_code) == (409, 409)
    message = str(error.value)
    assert "\n" not in message
    assert f"subject '{subject}'" in message
    assert "BACKWARD" in message
    assert len(registry.get_versions(subject)) == 1


def test_subject_name_strategies_topic_record_and_topic_record(
    kafka_bootstrap: str, new_topic: TopicFactory, registry: SchemaRegistryClient
) -> None:
    topic = new_topic(1)
    title = f"Order{uuid.uuid4().hex[:8]}"
    schema = {"title": title, "type": "object", "properties": {"id": {"type": "integer"}}}
    for strategy in ("topic", "record", "topic_record"):
        codec = JsonSchemaCodec(registry, schema=schema, subject_strategy=strategy)
        send(kafka_bootstrap, topic, [{"id": 1}], codec)
    subjects = set(registry.get_subjects())
    assert {f"{topic}-value", title, f"{topic}-{title}"} <= subjects


def test_with_auto_register_off_an_unregistered_schema_is_refused_naming_the_subject(
    kafka_bootstrap: str, new_topic: TopicFactory, registry: SchemaRegistryClient
) -> None:
    topic = new_topic(1)
    codec = JsonSchemaCodec(registry, auto_register=False)
    producer = Producer(make_settings(kafka_bootstrap))
    try:
        with pytest.raises(ProduceError) as error:
            producer.send_sync(topic, OrderV1(id=1, sku="A"), codec=codec)
        assert f"subject '{topic}-value'" in str(error.value)
        assert "auto_register is off" in str(error.value)
        # Registered by someone else (review, CI): then it is found and used.
        registry.register_schema(
            f"{topic}-value", Schema(orjson.dumps(OrderV1.model_json_schema()).decode(), "JSON")
        )
        producer.send_sync(topic, OrderV1(id=1, sku="A"), codec=codec)
    finally:
        producer.close()
    assert registry.get_subjects().count(f"{topic}-value") == 1


# --- Caching -------------------------------------------------------------------------------


def test_one_registry_request_per_schema_id_per_process(
    kafka_bootstrap: str, new_topic: TopicFactory, schema_registry: SchemaRegistry
) -> None:
    topic = new_topic(1)
    with CountingProxy(schema_registry.url).running() as proxy:
        producer_codec = JsonSchemaCodec({"url": proxy.url})
        send(kafka_bootstrap, topic, [OrderV1(id=i, sku="C") for i in range(40)], producer_codec)
        registrations = proxy.count("POST", f"/subjects/{topic}-value/versions")
        assert registrations == 1, proxy.counts
        received: list[OrderV1] = []
        app = App(f"g-{topic}")

        @app.handler(topic, codec=JsonSchemaCodec({"url": proxy.url}))
        def handle(order: OrderV1) -> None:
            received.append(order)

        with running(app, make_settings(kafka_bootstrap)):
            wait_until(lambda: len(received) == 40, 30, "40 records")
        by_id = {path: n for (method, path), n in proxy.counts.items() if "/schemas/ids/" in path}
        assert list(by_id.values()) == [1], proxy.counts
        assert sum(proxy.counts.values()) <= 3, proxy.counts  # + the start-up check


AVRO_V2_WITH_DEFAULT = orjson.dumps(
    {
        "type": "record",
        "name": "Order",
        "namespace": "kwtest",
        "fields": [
            {"name": "id", "type": "int"},
            {"name": "quantity", "type": "int", "default": 1},
        ],
    }
).decode()


@pytest.mark.parametrize("reader_schema", [None, AVRO_V2_WITH_DEFAULT], ids=["writer", "reader"])
def test_avro_decodes_as_confluents_deserializer_with_one_request_per_schema_id(
    kafka_bootstrap: str,
    new_topic: TopicFactory,
    schema_registry: SchemaRegistry,
    reader_schema: str | None,
) -> None:
    """AvroCodec reads the first record of a schema id with confluent-kafka's AvroDeserializer
    and the next ones with fastavro and the schemas it parsed: the values are the
    deserializer's, records of two writer schemas interleaved, and bad payloads fail as in it."""
    topic = new_topic(1)
    writer = registry_client({"url": schema_registry.url})
    v1 = AvroCodec(writer, writer_schema=AVRO_V1)
    v2 = AvroCodec(writer, writer_schema=AVRO_V2_WITH_DEFAULT)
    records = [
        v1.encode_for(topic, {"id": i}) if i % 2 else v2.encode_for(topic, {"id": i, "quantity": i})
        for i in range(20)
    ]
    with CountingProxy(schema_registry.url).running() as proxy:
        codec = AvroCodec({"url": proxy.url}, reader_schema=reader_schema)
        decoded = [codec.decode(record, []) for record in records]
        by_id = {path: n for (method, path), n in proxy.counts.items() if "/schemas/ids/" in path}
        assert sorted(by_id.values()) == [1, 1], proxy.counts
    reference = AvroDeserializer(
        writer, reader_schema, conf={"subject.name.strategy.type": "RECORD"}
    )
    assert decoded == [reference(record, None) for record in records]
    if reader_schema is not None:
        assert decoded[1] == {"id": 1, "quantity": 1}  # V1, the default filled in
    truncated = records[2][:-1]
    with pytest.raises(Exception) as ours:
        codec.decode(truncated, [])
    with pytest.raises(Exception) as theirs:
        reference(truncated, None)
    assert type(ours.value) is type(theirs.value)


# --- Bad input -----------------------------------------------------------------------------


def test_an_unknown_schema_id_is_fatal_with_the_raw_bytes_kept(
    kafka_bootstrap: str, new_topic: TopicFactory, registry: SchemaRegistryClient
) -> None:
    topic = new_topic(1)
    dlq = f"{topic}.dlq"
    raw = b"\x00" + (2_000_000_000).to_bytes(4, "big") + b"\x02"
    produce(kafka_bootstrap, topic, [raw])
    calls: list[int] = []
    app = App(f"g-{topic}")

    @app.handler(topic, codec=AvroCodec(registry), dlq=dlq, retries=3)
    def handle(msg: Message[Any]) -> None:
        calls.append(msg.attempt)
        _ = msg.value

    with running(app, make_settings(kafka_bootstrap)):
        (record,) = read_topic(kafka_bootstrap, dlq, 1)
    assert calls == [1]
    assert record.value() == raw
    kw = _kw_headers(record)
    assert kw["kw.error.type"] == "kafkaworker.errors.DeserializationError"
    assert "schema id 2000000000 is unknown to the Schema Registry" in kw["kw.error.message"]
    assert "HTTP 404" in kw["kw.error.message"]


def test_a_registry_unreachable_at_start_up_is_one_line_naming_the_url(
    kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    topic = new_topic(1)
    url = f"http://127.0.0.1:{free_port()}/apis/ccompat/v7"
    app = App(f"g-{topic}")

    @app.handler(topic, codec=JsonSchemaCodec({"url": url, "timeout": 2}))
    def handle(msg: Message[Any]) -> None:
        pass

    settings = make_settings(kafka_bootstrap)
    with pytest.raises(StartupError) as error:
        Runner(app, settings, resolve_specs(app, settings)).run()
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"cannot reach the Schema Registry at {url} (")
    assert message.endswith("check schema_registry.url and that the registry is up")


def test_credentials_never_appear_in_a_registry_error(
    kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    topic = new_topic(1)
    port = free_port()
    app = App(f"g-{topic}")
    secret = "s3cret-" + uuid.uuid4().hex
    codec = JsonSchemaCodec(
        {"url": f"http://127.0.0.1:{port}", "basic.auth.user.info": f"svc:{secret}"}
    )

    @app.handler(topic, codec=codec)
    def handle(msg: Message[Any]) -> None:
        pass

    settings = make_settings(kafka_bootstrap)
    with pytest.raises(StartupError) as error:
        Runner(app, settings, resolve_specs(app, settings)).run()
    assert secret not in str(error.value)
    assert f"http://127.0.0.1:{port}" in str(error.value)


def test_named_codecs_come_from_the_settings_and_bind_to_their_handlers(
    schema_registry: SchemaRegistry, protos: dict[str, ModuleType]
) -> None:
    """runtime_codecs: what the runner builds for codec="avro"/"json_schema"/"protobuf"."""
    order_type = protos["orders_v1"].Order
    codecs = runtime_codecs(
        {"a": "json_schema", "b": "protobuf"},
        None,
        schema_registry.url,
        {"auto.register.schemas": False, "subject.name.strategy": "topic_record"},
    )
    assert isinstance(codecs["json_schema"], JsonSchemaCodec)
    assert codecs["json_schema"].auto_register is False
    assert codecs["json_schema"].subject_strategy == "topic_record"
    # One client, so one cache of schemas by id, for every codec of the process.
    assert codecs["json_schema"].registry is codecs["protobuf"].registry
    app = App("named")

    def handle(order: Any) -> None:
        pass

    handle.__annotations__["order"] = order_type  # see the round-trip test
    app.handler("orders", codec="protobuf")(handle)
    bound = app.handlers["handle"].value_codec(codecs)
    assert isinstance(bound, ProtobufCodec)
    assert bound.message_type is order_type


# --- The registry killed mid-run -----------------------------------------------------------


class Kind(BaseModel):
    """A second schema, registered before the registry dies, first read while it is down."""

    id: int
    kind: str


def test_registry_killed_mid_run_cached_schemas_flow_new_ones_retry_until_it_is_back(
    kafka_bootstrap: str,
    new_topic: TopicFactory,
    own_registry: Any,
    tmp_path: Path,
) -> None:
    registry: SchemaRegistry = own_registry()
    topic = new_topic(1)
    dlq = f"{topic}.dlq"
    producer_codec = JsonSchemaCodec({"url": registry.url})
    handled: list[dict[str, Any]] = []
    attempts: dict[int, int] = {}
    app = App(f"g-{topic}")

    @app.handler(
        topic,
        codec=JsonSchemaCodec({"url": registry.url, "timeout": 2}),
        dlq=dlq,
        retries=0,  # a registry that is down is no fault of the record: retried all the same
        backoff=Backoff(initial=0.2, max=1.0),
    )
    def handle(msg: Message[Any]) -> None:
        attempts[msg.offset] = msg.attempt
        handled.append(msg.value)

    producer = Producer(make_settings(kafka_bootstrap))
    try:
        with running(app, make_settings(kafka_bootstrap)):
            for i in range(3):
                producer.send_sync(topic, OrderV1(id=i, sku="before"), codec=producer_codec)
            wait_until(lambda: len(handled) == 3, 30, "the records before the kill")
            # Registered now; no worker has asked for it yet.
            new_schema = producer_codec.encode_for(topic, Kind(id=100, kind="new"))
            registry.stop(kill=True)
            assert not registry.answers()

            # Cached on both sides: no registry needed.
            for i in range(3, 6):
                producer.send_sync(topic, OrderV1(id=i, sku="down"), codec=producer_codec)
            wait_until(lambda: len(handled) == 6, 30, "cached-schema records while down")
            produce(kafka_bootstrap, topic, [new_schema])
            wait_until(
                lambda: attempts.get(6, 0) >= 3, 30, "the new-schema record retried with backoff"
            )
            assert len(handled) == 6
            registry.start()
            wait_until(lambda: len(handled) == 7, 30, "the new-schema record after the restart")
    finally:
        producer.close()
    assert handled[6] == {"id": 100, "kind": "new"}
    assert [h["sku"] for h in handled[:6]] == ["before"] * 3 + ["down"] * 3
    assert end_offsets(kafka_bootstrap, dlq, 1) == {0: 0}


# --- kafkaworker produce --codec ... --schema FILE ------------------------------------------


def test_produce_command_writes_each_format_through_the_registry(  # noqa: PLR0917 - fixtures
    kafka_bootstrap: str,
    new_topic: TopicFactory,
    registry: SchemaRegistryClient,
    schema_registry: SchemaRegistry,
    protos: dict[str, ModuleType],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    env = {
        "KAFKAWORKER_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap,
        "KAFKAWORKER_SCHEMA_REGISTRY__URL": schema_registry.url,
        "KAFKAWORKER_SETTINGS": "",
    }
    avsc = tmp_path / "order.avsc"
    avsc.write_text(AVRO_V1)
    schema_json = tmp_path / "order.schema.json"
    schema_json.write_bytes(orjson.dumps(OrderV1.model_json_schema()))
    cases: list[tuple[str, Path, Any]] = [
        ("avro", avsc, AvroCodec(registry)),
        ("json_schema", schema_json, JsonSchemaCodec(registry)),
        (
            "protobuf",
            PROTOS / "orders_v1.proto",
            ProtobufCodec(registry, protos["orders_v1"].Order),
        ),
    ]
    lines = {
        "avro": '{"id": 1}\n{"id": 2}\n',
        "json_schema": '{"id": 1, "sku": "A"}\n{"id": 2, "sku": "B"}\n',
        "protobuf": '{"id": 1, "sku": "A", "total": {"units": 5}}\n{"id": 2, "sku": "B"}\n',
    }
    for codec, schema, reader in cases:
        topic = new_topic(1)
        result = CliRunner().invoke(
            cli,
            ["produce", topic, "--codec", codec, "--schema", str(schema)],
            input=lines[codec],
            env=env,
        )
        assert result.exit_code == 0, result.output
        records = read_topic(kafka_bootstrap, topic, 2)
        values = [reader.decode(r.value(), []) for r in records]
        if codec == "protobuf":
            values = [(v.id, v.sku, v.total.units) for v in values]
            assert values == [(1, "A", 5), (2, "B", 0)]
        else:
            assert values == [orjson.loads(line) for line in lines[codec].splitlines()]

    topic = new_topic(1)
    bad = CliRunner().invoke(
        cli,
        ["produce", topic, "--codec", "avro", "--schema", str(avsc)],
        input='{"id": 3}\n{"id": "three"}\n{"id": 4}\n',
        env=env,
    )
    assert bad.exit_code == 1
    assert bad.stdout == f"produced 1 message(s) to {topic}\n"
    assert bad.stderr.startswith("Error: line 2 does not match the schema: ")
    assert end_offsets(kafka_bootstrap, topic, 1) == {0: 1}

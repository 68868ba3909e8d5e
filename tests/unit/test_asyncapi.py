"""`kafkaworker asyncapi`: the app's AsyncAPI 3.0 document, validated by the official parser
(@asyncapi/parser with its Avro and Protobuf schema parsers, run with node:
tools/asyncapi_parser.py), its schemas checked against the records the app really writes, and
no secret in it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import jsonschema
import orjson
import pytest
import yaml
from click.testing import CliRunner
from google.protobuf import descriptor_pb2, descriptor_pool
from pydantic import BaseModel, Field

from kafkaworker import App, Backoff, DeadLetter, Message, Settings, headers
from kafkaworker.asyncapi import build, render
from kafkaworker.asyncapi.proto_text import proto_text
from kafkaworker.cli import cli
from kafkaworker.serialization.avro import AvroCodec
from kafkaworker.serialization.json_schema import JsonSchemaCodec
from kafkaworker.serialization.protobuf import ProtobufCodec
from kafkaworker.serialization.registry import registry_client
from kafkaworker.testing import TestClient
from tests.integration.registry_support import generate_protos
from tools import asyncapi_parser

SECRETS = ("pw-SECRET-1", "url-SECRET-2", "basic-SECRET-3", "kp-SECRET-4", "reguser")


class Money(BaseModel):
    units: int
    currency: str = Field(pattern="^[A-Z]{3}$")


class Card(BaseModel):
    kind: Literal["card"] = "card"
    last4: str


class Invoice(BaseModel):
    kind: Literal["invoice"] = "invoice"
    days: int = 30


class Order(BaseModel):
    id: int
    total: Money
    placed: datetime | None = None
    payment: Card | Invoice = Field(discriminator="kind")
    tags: tuple[str, int] = ("x", 1)


class Accepted(BaseModel):
    id: int
    total: Money


ORDER_AVRO = textwrap.dedent(
    """
    {"type": "record", "name": "Order", "namespace": "shop",
     "fields": [{"name": "id", "type": "int"}, {"name": "quantity", "type": "int", "default": 1}]}
    """
)
SHIPMENT_SCHEMA = {
    "type": "object",
    "properties": {"id": {"type": "integer"}, "to": {"$ref": "#/$defs/Address"}},
    "$defs": {"Address": {"type": "object", "properties": {"city": {"type": "string"}}}},
}


@pytest.fixture(scope="module")
def protos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ModuleType]:
    return generate_protos(tmp_path_factory.mktemp("protos"))


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """A secured cluster and a registry, with a secret in every place one can be."""
    for name in ("ca.pem", "client.pem", "client.key"):
        (tmp_path / name).write_text("not read here\n")
    return Settings.model_validate(
        {
            "kafka": {
                "bootstrap_servers": "b-1.example:9093,b-2.example:9093",
                "security": {
                    "protocol": "SASL_SSL",
                    "sasl": {
                        "mechanism": "SCRAM-SHA-512",
                        "username": "app",
                        "password": SECRETS[0],
                    },
                    "ssl": {
                        "ca_location": str(tmp_path / "ca.pem"),
                        "certificate_location": str(tmp_path / "client.pem"),
                        "key_location": str(tmp_path / "client.key"),
                        "key_password": SECRETS[3],
                    },
                },
                "producer": {"sasl.password": SECRETS[0]},
            },
            "schema_registry": {
                "url": f"https://{SECRETS[4]}:{SECRETS[1]}@registry.example:8081",
                "config": {"basic.auth.user.info": f"key:{SECRETS[2]}"},
            },
        }
    )


def catalog(protos: dict[str, ModuleType], *, by_name: bool = True) -> App:
    """An app with every kind of payload the document describes. `by_name`: with the handler
    whose registry codec is named (the TestClient does not build those: it needs a runner)."""
    app = App("catalog")
    registry = registry_client({"url": "mock://asyncapi"})
    proto_order = protos["orders_v1"].Order

    @app.handler(
        "orders",
        retries=1,
        backoff=Backoff(initial=0, max=0),
        retry_topics=[5, 60],
        dlq="orders.dlq",
        output="orders.accepted",
    )
    def accept(order: Order) -> list[Accepted]:
        if order.id < 0:
            raise DeadLetter("negative id")
        if order.id == 0:
            raise ValueError("try later")
        return [Accepted(id=order.id, total=order.total)]

    @app.handler(
        ["avro.orders", "avro.orders.eu"], codec=AvroCodec(registry, reader_schema=ORDER_AVRO)
    )
    def avro(msg: Message) -> None: ...

    @app.handler("jobs", mode="queue", group="jobs-workers", dlq="jobs.dlq", codec="text")
    def job(msg: Message[str]) -> None: ...

    @app.handler("proto.orders", codec=ProtobufCodec(registry, proto_order))
    def proto(msg: Message) -> None: ...

    if by_name:

        @app.handler("named.orders", codec="json_schema")
        def named(msg: Message[Order]) -> None: ...

    @app.handler("shipments", codec=JsonSchemaCodec(registry, schema=SHIPMENT_SCHEMA))
    def ship(msg: Message) -> None: ...

    @app.handler("raw", codec="raw", output="raw.copy")
    def copy(msg: Message) -> bytes:
        return msg.raw_value or b""

    return app


@pytest.fixture
def document(protos: dict[str, ModuleType], settings: Settings) -> dict[str, Any]:
    return build(catalog(protos), settings, version="1.4.2")


@pytest.fixture(scope="module")
def parser() -> Iterator[None]:
    if asyncapi_parser.installed() is None:
        if os.environ.get("CI"):
            pytest.fail(f"the AsyncAPI parser is missing: {asyncapi_parser.HOW}")
        pytest.skip(f"the AsyncAPI parser is missing: {asyncapi_parser.HOW}")
    yield


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_the_official_parser_accepts_the_document(
    parser: None, document: dict[str, Any], fmt: Literal["yaml", "json"]
) -> None:
    parsed, diagnostics = asyncapi_parser.validate(render(document, fmt))
    # Severity 2 is information ("3.1.0 is the latest AsyncAPI"): 3.0 is what was asked for.
    assert [d for d in diagnostics if d.severity < 2] == []
    assert parsed


def test_the_parser_refuses_what_is_wrong(parser: None, document: dict[str, Any]) -> None:
    """The check can fail: a receive operation on a channel the document lacks, and a
    Protobuf payload whose type is nowhere, are errors."""
    document["operations"]["accept"]["channel"] = {"$ref": "#/channels/nowhere"}
    proto = document["components"]["messages"]["proto"]["payload"]
    proto["schema"] = proto["schema"].replace("int32 id = 1;", "Missing id = 1;")
    parsed, diagnostics = asyncapi_parser.validate(render(document))
    errors = " ".join(d.message for d in diagnostics if d.severity == 0)
    assert not parsed
    assert "nowhere" in errors or "Missing" in errors


def test_no_secret_of_the_settings_is_in_the_document(document: dict[str, Any]) -> None:
    for text in (render(document, "yaml"), render(document, "json")):
        for secret in SECRETS:
            assert secret not in text
    [server] = {s["bindings"]["kafka"]["schemaRegistryUrl"] for s in document["servers"].values()}
    assert server == "https://registry.example:8081"


def test_servers_and_security_from_the_settings(document: dict[str, Any]) -> None:
    assert {name: s["host"] for name, s in document["servers"].items()} == {
        "broker-1": "b-1.example:9093",
        "broker-2": "b-2.example:9093",
    }
    assert {s["protocol"] for s in document["servers"].values()} == {"kafka-secure"}
    schemes = document["components"]["securitySchemes"]
    assert {name: s["type"] for name, s in schemes.items()} == {
        "sasl": "scramSha512",
        "mtls": "X509",
    }
    assert document["info"] == {**document["info"], "title": "catalog", "version": "1.4.2"}


def test_a_channel_per_topic_and_the_operations_of_each_handler(document: dict[str, Any]) -> None:
    assert set(document["channels"]) == {
        "orders",
        "orders.retry.5s",
        "orders.retry.60s",
        "orders.dlq",
        "orders.accepted",
        "avro.orders",
        "avro.orders.eu",
        "jobs",
        "jobs.dlq",
        "proto.orders",
        "named.orders",
        "shipments",
        "raw",
        "raw.copy",
    }
    operations = {
        name: (op["action"], op["channel"]["$ref"].removeprefix("#/channels/"))
        for name, op in document["operations"].items()
        if name.startswith(("accept", "avro", "job"))
    }
    assert operations == {
        "accept": ("receive", "orders"),
        "accept.orders.retry.5s": ("receive", "orders.retry.5s"),
        "accept.orders.retry.60s": ("receive", "orders.retry.60s"),
        "accept.send.orders.retry.5s": ("send", "orders.retry.5s"),
        "accept.send.orders.retry.60s": ("send", "orders.retry.60s"),
        "accept.dead_letter": ("send", "orders.dlq"),
        "accept.output": ("send", "orders.accepted"),
        "avro.avro.orders": ("receive", "avro.orders"),
        "avro.avro.orders.eu": ("receive", "avro.orders.eu"),
        "job": ("receive", "jobs"),
        "job.dead_letter": ("send", "jobs.dlq"),
    }
    group = document["operations"]["job"]["bindings"]["kafka"]["groupId"]
    assert group == {"type": "string", "enum": ["jobs-workers"]}
    assert "share group" in document["operations"]["job"]["description"]


def test_payload_schemas_of_every_kind(document: dict[str, Any]) -> None:
    messages = document["components"]["messages"]
    assert messages["accept"]["payload"] == {"$ref": "#/components/schemas/Order"}
    assert messages["avro"]["payload"]["schemaFormat"].startswith("application/vnd.apache.avro")
    assert messages["avro"]["payload"]["schema"]["name"] == "Order"
    assert messages["avro"]["bindings"]["kafka"]["schemaIdPayloadEncoding"] == "confluent"
    assert messages["job"]["payload"] == {"type": "string"}
    proto = messages["proto"]["payload"]
    assert proto["schemaFormat"] == "application/vnd.google.protobuf;version=3"
    assert "message Order {" in proto["schema"] and "message Money {" in proto["schema"]
    # By name: the registry has the writer schemas; the signature's model is what it reads.
    assert messages["named"]["payload"] == {"$ref": "#/components/schemas/Order"}
    assert messages["ship"]["payload"]["properties"]["to"] == {
        "$ref": "#/components/schemas/ship.validation.Address"
    }
    assert messages["copy.output"]["payload"] == {"type": "string", "format": "binary"}
    # JSON Schema 2020-12 (pydantic's) in the AsyncAPI Schema's (draft 07) words.
    order = document["components"]["schemas"]["Order"]["properties"]
    assert order["payment"]["discriminator"] == "kind"
    assert order["tags"]["items"] == [{"type": "string"}, {"type": "integer"}]
    assert "prefixItems" not in orjson.dumps(document).decode()


def test_the_schemas_and_headers_are_those_of_the_records_the_app_writes(
    document: dict[str, Any], protos: dict[str, ModuleType]
) -> None:
    """What the document says of outputs, retry and dead-letter records holds for the records
    the app's handler really writes (the TestClient runs it on the real execution path)."""
    app = catalog(protos, by_name=False)
    card = {"kind": "card", "last4": "4242"}
    order = {"id": 7, "total": {"units": 5, "currency": "EUR"}, "payment": card}
    components = document["components"]
    with TestClient(app) as client:
        assert client.send("orders", order).outcome == "finished"
        assert client.send("orders", {**order, "id": -1}).outcome == "dead_lettered"
        assert client.send("orders", {**order, "id": 0}).outcome == "retry_topic"
    [output] = client.records("orders.accepted")
    [dead] = client.records("orders.dlq")
    [retried] = client.records("orders.retry.5s")

    def check(instance: Any, message: str) -> None:
        schema = {**components["messages"][message]["payload"], "components": components}
        jsonschema.validate(instance, schema)

    check(output.json(), "accept.output")
    check(dead.json(), "accept.dead_letter")
    check(order, "accept")
    with pytest.raises(jsonschema.ValidationError):
        check({**order, "total": {"units": 5, "currency": "euro"}}, "accept")
    for record, message in ((dead, "accept.dead_letter"), (retried, "accept.retry")):
        written = sorted(name for name, _ in record.headers if name.startswith(headers.PREFIX))
        described = components["messages"][message]["headers"]
        assert written == sorted(described["required"]) == sorted(described["properties"])


def test_the_protobuf_text_compiles_to_the_same_message(
    protos: dict[str, ModuleType], tmp_path: Path
) -> None:
    """The printed .proto (the message and the types it uses, in one file) compiles with
    protoc to the same fields, numbers and types: it describes the same bytes."""
    original = protos["orders_v1"].Order.DESCRIPTOR
    (tmp_path / "printed.proto").write_text(proto_text(original))
    compiled = tmp_path / "printed.pb"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{tmp_path}",
            f"--descriptor_set_out={compiled}",
            "printed.proto",
        ],
        check=True,
    )
    pool = descriptor_pool.DescriptorPool()  # not the default one, which has kwtest.v1 already
    for file in descriptor_pb2.FileDescriptorSet.FromString(compiled.read_bytes()).file:
        pool.Add(file)
    printed = pool.FindMessageTypeByName("kwtest.v1.Order")

    def shape(descriptor: Any) -> list[tuple[str, int, int, str | None]]:
        return [
            (f.name, f.number, f.type, f.message_type.name if f.message_type else None)
            for f in descriptor.fields
        ]

    assert shape(printed) == shape(original)
    assert shape(printed.fields_by_name["total"].message_type) == shape(
        original.fields_by_name["total"].message_type
    )


def test_the_command_writes_yaml_or_json(tmp_path: Path) -> None:
    out = tmp_path / "orders.asyncapi.json"
    result = CliRunner().invoke(
        cli, ["asyncapi", "apps.orders.app:app", "--format", "json", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert result.output == (f"wrote {out}: AsyncAPI 3.0.0, 3 channel(s), 3 operation(s)\n")
    assert set(orjson.loads(out.read_text())["channels"]) == {
        "orders",
        "orders.dlq",
        "orders.accepted",
    }
    shown = CliRunner().invoke(cli, ["asyncapi", "apps.orders.app:app", "--only", "accept_order"])
    assert shown.exit_code == 0, shown.output
    assert yaml.safe_load(shown.output)["asyncapi"] == "3.0.0"


def test_bad_input_is_one_line(tmp_path: Path) -> None:
    wrong_format = CliRunner().invoke(cli, ["asyncapi", "apps.orders.app:app", "--format", "xml"])
    assert wrong_format.exit_code == 2
    assert "'xml' is not one of 'yaml', 'json'" in wrong_format.output
    unknown = CliRunner().invoke(cli, ["asyncapi", "apps.orders.app:app", "--only", "nope"])
    assert (unknown.exit_code, unknown.output.count("\n")) == (1, 1)
    assert "--only nope: app 'orders-service' has no such handler" in unknown.output
    unwritable = CliRunner().invoke(
        cli, ["asyncapi", "apps.orders.app:app", "--out", str(tmp_path / "no" / "such.yaml")]
    )
    assert unwritable.exit_code == 1
    assert unwritable.output.startswith("Error: cannot write ") and "fix --out" in unwritable.output


@pytest.mark.parametrize(
    ("security", "schemes", "protocol"),
    [
        ({}, {}, "kafka"),
        ({"protocol": "SSL"}, {}, "kafka-secure"),
        (
            {
                "protocol": "SASL_PLAINTEXT",
                "sasl": {"mechanism": "PLAIN", "username": "u", "password": SECRETS[0]},
            },
            {"sasl": "plain"},
            "kafka",
        ),
        (
            {
                "protocol": "SASL_SSL",
                "sasl": {
                    "mechanism": "OAUTHBEARER",
                    "oauthbearer": {
                        "client_id": "worker",
                        "client_secret": SECRETS[0],
                        "token_endpoint_url": f"https://u:{SECRETS[1]}@idp.example/token",
                        "scope": "kafka",
                    },
                },
            },
            {"sasl": "oauth2"},
            "kafka-secure",
        ),
        (
            {
                "protocol": "SASL_SSL",
                "sasl": {
                    "mechanism": "OAUTHBEARER",
                    "oauthbearer": {"method": "callback", "token_provider": "tokens:msk_token"},
                },
            },
            {"sasl": "oauth2"},
            "kafka-secure",
        ),
    ],
)
def test_each_security_setting_becomes_a_valid_scheme(
    parser: None, security: dict[str, Any], schemes: dict[str, str], protocol: str
) -> None:
    from apps.orders.app import app  # noqa: PLC0415

    settings = Settings.model_validate({"kafka": {"security": security}})
    document = build(app, settings)
    found = document["components"].get("securitySchemes", {})
    assert {name: scheme["type"] for name, scheme in found.items()} == schemes
    assert document["servers"]["broker-1"]["protocol"] == protocol
    text = render(document)
    assert SECRETS[0] not in text and SECRETS[1] not in text
    parsed, diagnostics = asyncapi_parser.validate(text)
    assert parsed and [d for d in diagnostics if d.severity < 2] == []

"""The Schema Registry codecs' pure parts, without a registry: subject names, what an error
becomes, secrets kept out of messages, and the named codecs' settings. (The codecs against a
real registry: tests/integration/test_schema_codecs.py.)"""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka.schema_registry.error import SchemaRegistryError

from kafkaworker.errors import ConfigError, SchemaRefused, SchemaRegistryUnavailable
from kafkaworker.serialization import RUNTIME_CODECS, get_codec
from kafkaworker.serialization.json_schema import JsonSchemaCodec
from kafkaworker.serialization.named import runtime_codecs
from kafkaworker.serialization.registry import (
    decode_failure,
    encode_failure,
    registry_client,
    safe_url,
    schema_id,
    subject_for,
    subject_strategy_type,
)

FRAMED = b"\x00\x00\x00\x00\x2a{}"  # schema id 42


def client(**conf: Any) -> Any:
    return registry_client({"url": "mock://unit", **conf})


@pytest.mark.parametrize(
    ("strategy", "subject"),
    [("topic", "orders-value"), ("record", "shop.Order"), ("topic_record", "orders-shop.Order")],
)
def test_subject_names(strategy: str, subject: str) -> None:
    assert subject_for(strategy, "orders", "shop.Order") == subject


def test_an_unknown_strategy_is_one_line_naming_the_allowed_ones() -> None:
    with pytest.raises(ConfigError) as error:
        subject_strategy_type("by-key")
    assert str(error.value) == (
        "subject_strategy='by-key' is invalid: allowed are topic, record, topic_record "
        "(the topic strategy, <topic>-value, is the default)"
    )
    assert subject_strategy_type("topic-record") == "TOPIC_RECORD"


def test_the_client_gets_a_timeout_unless_its_config_has_one() -> None:
    assert registry_client({"url": "mock://a"})._rest_client.timeout == 10.0
    assert registry_client({"url": "mock://a", "timeout": 3})._rest_client.timeout == 3


def test_schema_ids_of_framed_payloads() -> None:
    assert schema_id(FRAMED) == 42
    assert schema_id(b"\x07\x00\x00\x00\x2a") is None
    assert schema_id(b"\x00") is None


@pytest.mark.parametrize("status", [500, 503, 401, 403, 408, 429])
def test_a_registry_that_does_not_answer_is_unavailable_not_a_bad_record(status: int) -> None:
    error = decode_failure(client(), SchemaRegistryError(status, status, "x"), FRAMED)
    assert isinstance(error, SchemaRegistryUnavailable)
    assert "schema id 42" in str(error)


def test_an_unknown_schema_id_is_a_bad_record() -> None:
    error = decode_failure(client(), SchemaRegistryError(404, 40403, "no"), FRAMED)
    assert type(error) is ValueError
    assert str(error) == (
        "schema id 42 is unknown to the Schema Registry at mock://unit (HTTP 404, error code 40403)"
    )


def test_a_refusal_names_the_subject_and_the_compatibility_rule() -> None:
    class Levels:
        """A subject with its own level over a global one (the mock client keeps none)."""

        def get_compatibility(self, subject: str | None = None) -> str:
            return "FULL" if subject == "orders-value" else "BACKWARD"

    error = encode_failure(
        Levels(),  # type: ignore[arg-type]
        SchemaRegistryError(409, 409, "long text"),
        "orders-value",
        auto_register=True,
    )
    assert isinstance(error, SchemaRefused)
    assert str(error) == (
        "the Schema Registry refused the schema for subject 'orders-value': not FULL compatible "
        "with its registered versions (HTTP 409, error code 409); make the change compatible "
        "or use another subject"
    )


def test_credentials_are_never_in_urls_or_reasons() -> None:
    registry = registry_client(
        {"url": "http://user:hunter2-secret@registry:8081/apis", "timeout": 1}
    )
    assert safe_url(registry) == "http://registry:8081/apis"
    error = decode_failure(registry, OSError("refused by user:hunter2-secret@registry"), FRAMED)
    assert isinstance(error, SchemaRegistryUnavailable)
    assert "hunter2-secret" not in str(error)
    with_info = registry_client({"url": "http://registry:8081", "basic.auth.user.info": "k:s3cr3t"})
    error = decode_failure(with_info, OSError("token s3cr3t rejected"), FRAMED)
    assert "s3cr3t" not in str(error)


def test_named_registry_codecs_need_a_registry_in_one_line() -> None:
    assert {"avro", "json_schema", "protobuf"} <= RUNTIME_CODECS
    with pytest.raises(ConfigError) as error:
        runtime_codecs({"handle": "json_schema"}, None, None)
    assert str(error.value) == (
        "handler 'handle' uses codec 'json_schema' but schema_registry.url is not set: add it "
        "to the settings (KAFKAWORKER_SCHEMA_REGISTRY__URL)"
    )
    with pytest.raises(LookupError, match="needs a Schema Registry"):
        get_codec("protobuf")


def test_named_codecs_take_auto_register_and_the_strategy_from_the_config() -> None:
    codecs = runtime_codecs(
        {"a": "json_schema"},
        None,
        "mock://named",
        {"auto.register.schemas": False, "subject.name.strategy": "record"},
    )
    codec = codecs["json_schema"]
    assert isinstance(codec, JsonSchemaCodec)
    assert (codec.auto_register, codec.subject_strategy) == (False, "record")
    with pytest.raises(ConfigError, match=r"auto\.register\.schemas='no' is invalid"):
        runtime_codecs({"a": "avro"}, None, "mock://named", {"auto.register.schemas": "no"})

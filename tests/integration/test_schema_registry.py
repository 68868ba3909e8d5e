"""The test Schema Registry itself (kafkaworker.testing.registry): it answers the Confluent
API, keeps its schemas across a crash, and a hung one is a timeout, not a hang."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable

import orjson
import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

from kafkaworker.testing.registry import SchemaRegistry

SCHEMA = Schema(orjson.dumps({"type": "record", "name": "R", "fields": []}).decode(), "AVRO")


def test_the_session_registry_answers_the_confluent_api(schema_registry: SchemaRegistry) -> None:
    with urllib.request.urlopen(f"{schema_registry.url}/subjects", timeout=5) as response:
        assert response.status == 200
        assert isinstance(orjson.loads(response.read()), list)
    # Loopback only: the registry must not be reachable from the network.
    assert schema_registry.url.startswith("http://127.0.0.1:")


def test_a_killed_registry_restarts_on_its_port_with_its_schemas(
    own_registry: Callable[[], SchemaRegistry],
) -> None:
    registry = own_registry()
    client = SchemaRegistryClient({"url": registry.url, "timeout": 5})
    schema_id = client.register_schema("kill-test-value", SCHEMA)
    registry.stop(kill=True)
    assert not registry.answers()
    registry.start()
    fresh = SchemaRegistryClient({"url": registry.url, "timeout": 5})  # nothing cached
    assert orjson.loads(fresh.get_schema(schema_id).schema_str) == orjson.loads(SCHEMA.schema_str)


def test_a_hung_registry_is_a_timeout_error_not_a_hang(
    own_registry: Callable[[], SchemaRegistry],
) -> None:
    registry = own_registry()
    client = SchemaRegistryClient({"url": registry.url, "timeout": 1, "max.retries": 0})
    registry.freeze()
    try:
        started = time.monotonic()
        with pytest.raises(Exception) as error:
            client.get_subjects()
        assert time.monotonic() - started < 10
        assert (
            "timed out" in str(error.value).lower()
            or "timeout" in type(error.value).__name__.lower()
        )
    finally:
        registry.thaw()
    assert registry.answers(timeout=5)

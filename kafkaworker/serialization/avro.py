"""Avro in the Confluent wire format (magic byte, 4-byte schema id, Avro binary), through a
Schema Registry with confluent_kafka.schema_registry and fastavro.

Needs the `avro` extra: `pip install kafkaworker[avro]`. Schemas are cached by the registry
client. With a reader schema, records written with an older or newer compatible writer schema
are resolved to it (a new field with a default is filled in), so consumers survive compatible
evolution.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from kafkaworker.errors import ConfigError
from kafkaworker.serialization import Headers

try:
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ConfigError(
        f"the avro codec needs the Schema Registry client ({exc.name} is missing): "
        "pip install 'kafkaworker[avro]'"
    ) from None


def registry_client(registry: SchemaRegistryClient | Mapping[str, Any]) -> SchemaRegistryClient:
    """A client from a config ({"url": ..., "basic.auth.user.info": ...}), or the client given.

    `mock://` URLs give confluent-kafka's in-memory registry; note that each mock client has
    its own schemas, so a producer and a consumer must share one instance to talk.
    """
    if isinstance(registry, Mapping):
        return SchemaRegistryClient.new_client(dict(registry))
    return registry


class AvroCodec:
    """Avro values through a Schema Registry; decodes to dicts (or a handler's model)."""

    name = "avro"
    uses_headers = False

    def __init__(
        self,
        registry: SchemaRegistryClient | Mapping[str, Any],
        *,
        reader_schema: str | None = None,
        writer_schema: str | None = None,
    ) -> None:
        self.registry = registry_client(registry)
        self._deserializer = AvroDeserializer(self.registry, reader_schema)
        self._serializer = AvroSerializer(self.registry, writer_schema) if writer_schema else None

    def decode(self, data: bytes, headers: Headers) -> Any:
        return self._deserializer(data, None)

    def encode(self, value: Any) -> bytes:
        raise TypeError("the avro codec encodes for a topic (its subject): use encode_for")

    def encode_for(self, topic: str, value: Any) -> bytes:
        """Encode `value` under the subject `<topic>-value`, registering the writer schema."""
        if self._serializer is None:
            raise TypeError("AvroCodec needs writer_schema= to encode")
        if isinstance(value, BaseModel):
            value = value.model_dump()
        encoded: bytes | None = self._serializer(
            value, SerializationContext(topic, MessageField.VALUE)
        )
        assert encoded is not None
        return encoded

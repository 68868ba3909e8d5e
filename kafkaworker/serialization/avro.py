"""Avro in the Confluent wire format (magic byte, 4-byte schema id, Avro binary), through a
Schema Registry with confluent_kafka.schema_registry and fastavro.

Needs the `avro` extra: `pip install kafkaworker[avro]`. Schemas are cached by id by the
registry client (one request per id per process). With a reader schema, records written with
an older or newer compatible writer schema are resolved to it (a new field with a default is
filled in), so consumers survive compatible evolution.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from pydantic import BaseModel

from kafkaworker.serialization.registry import (
    RegistryCodec,
    registry_client,
)

try:
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    from kafkaworker.errors import ConfigError

    raise ConfigError(
        f"the avro codec needs fastavro and the registry client ({exc.name} is missing): "
        "pip install 'kafkaworker[avro]'"
    ) from None

__all__ = ["AvroCodec", "registry_client"]


class AvroCodec(RegistryCodec):
    """Avro values through a Schema Registry; decodes to dicts (or a handler's model).

    `writer_schema` (an Avro schema, JSON text) is what `encode_for` writes with; a pydantic
    model value is written as its `model_dump()`. See RegistryCodec for `subject_strategy`
    and `auto_register`.
    """

    name = "avro"

    def __init__(
        self,
        registry: SchemaRegistryClient | Mapping[str, Any],
        *,
        reader_schema: str | None = None,
        writer_schema: str | None = None,
        subject_strategy: str = "topic",
        auto_register: bool = True,
    ) -> None:
        super().__init__(registry, subject_strategy=subject_strategy, auto_register=auto_register)
        self._deserializer = AvroDeserializer(
            self.registry, reader_schema, conf=self.deserializer_conf()
        )
        self._writer_schema = writer_schema
        self._serializer = (
            AvroSerializer(self.registry, writer_schema, conf=self.serializer_conf())
            if writer_schema
            else None
        )

    def _decode(self, data: bytes) -> Any:
        return self._deserializer(data, None)

    def _encode(self, topic: str, value: Any) -> bytes | None:
        if self._serializer is None:
            raise TypeError("AvroCodec needs writer_schema= to encode")
        if isinstance(value, BaseModel):
            value = value.model_dump()
        encoded: bytes | None = self._serializer(value, self.context(topic))
        return encoded

    def record_name(self, value: Any) -> str | None:
        if not self._writer_schema:
            return None
        try:
            schema = orjson.loads(self._writer_schema)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(schema, dict) or "name" not in schema:
            return None
        name = str(schema["name"])
        namespace = schema.get("namespace")
        return f"{namespace}.{name}" if namespace and "." not in name else name

"""Avro in the Confluent wire format (magic byte, 4-byte schema id, Avro binary), through a
Schema Registry with confluent_kafka.schema_registry and fastavro.

Needs the `avro` extra: `pip install kafkaworker[avro]`. Schemas are cached by id by the
registry client (one request per id per process). With a reader schema, records written with
an older or newer compatible writer schema are resolved to it (a new field with a default is
filled in), so consumers survive compatible evolution.

Decoding: the first record of each schema id goes through confluent-kafka's AvroDeserializer
(the registry request, its errors, the schema parsed with its references); the records after it
are read by fastavro with the parsed schemas kept per id in a plain dict. The deserializer's
own call does per-record work none of kafkaworker's records need: it rebuilds the expanded
reader schema for field-level rules (only run with a serialization context, which decode never
has) and takes two locks (the client's schema cache, the parsed-schema cache); the expansion
alone cost about as much as the Avro decoding in a profile of S1, and the locks serialize a
handler's worker threads.
"""

from __future__ import annotations

import io
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
    from fastavro import schemaless_reader
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
    and `auto_register`. Both schemas stay readable as attributes (`kafkaworker asyncapi`
    describes the payload with them).
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
        # schema id -> (parsed writer schema, parsed reader schema or None): see _decode.
        self._parsed: dict[int, tuple[Any, Any]] = {}
        self.reader_schema = reader_schema
        self.writer_schema = writer_schema
        self._serializer = (
            AvroSerializer(self.registry, writer_schema, conf=self.serializer_conf())
            if writer_schema
            else None
        )

    def _decode(self, data: bytes) -> Any:
        # Confluent framing: magic byte 0, the 4-byte schema id, the Avro binary payload.
        if len(data) > 5 and data[0] == 0:
            schemas = self._parsed.get(int.from_bytes(data[1:5], "big"))
            if schemas is not None:
                payload = io.BytesIO(data)
                payload.seek(5)
                return schemaless_reader(payload, schemas[0], schemas[1])
        value = self._deserializer(data, None)
        self._remember(data)
        return value

    def _remember(self, data: bytes) -> None:
        """Keep the parsed schemas of `data`'s schema id, once the deserializer has read a record
        of it: the same objects it reads with (its reader schema, or the writer's), so the
        records after it decode exactly as it would decode them without a context."""
        if data[0] != 0:  # magic byte 1: a schema GUID, not an id (read by the deserializer)
            return
        schema_id = int.from_bytes(data[1:5], "big")
        parse = getattr(self._deserializer, "_get_parsed_schema", None)
        if schema_id in self._parsed or parse is None:  # another client version: no fast path
            return
        # The client's cache answers (the deserializer just asked it); never a request here.
        writer = parse(self.registry.get_schema(schema_id))
        if writer == "bytes" or (isinstance(writer, dict) and writer.get("type") == "bytes"):
            return  # the deserializer returns such payloads as they are, unread
        reader = getattr(self._deserializer, "_reader_schema", None)
        self._parsed[schema_id] = (writer, reader)

    def _encode(self, topic: str, value: Any) -> bytes | None:
        if self._serializer is None:
            raise TypeError("AvroCodec needs writer_schema= to encode")
        if isinstance(value, BaseModel):
            value = value.model_dump()
        encoded: bytes | None = self._serializer(value, self.context(topic))
        return encoded

    def record_name(self, value: Any) -> str | None:
        if not self.writer_schema:
            return None
        try:
            schema = orjson.loads(self.writer_schema)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(schema, dict) or "name" not in schema:
            return None
        name = str(schema["name"])
        namespace = schema.get("namespace")
        return f"{namespace}.{name}" if namespace and "." not in name else name

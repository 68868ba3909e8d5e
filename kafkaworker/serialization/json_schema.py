"""JSON Schema in the Confluent wire format (magic byte, 4-byte schema id, JSON text), through a
Schema Registry with confluent_kafka.schema_registry's JSON serializers.

Needs the registry client and jsonschema: `pip install 'kafkaworker[json_schema]'`. A pydantic
model is its own schema: producing a model registers `Model.model_json_schema()` (with
auto_register) under its subject; a reader validates each record against the schema it was
written with (fetched by id, cached), then a typed handler's model validates it again, so a
V2 model with a defaulted new field reads V1 records.

References: a schema whose `$ref`s name other registered schemas is given as a registry
`Schema` with its `references` (name = the `$ref` text, the subject and version it is
registered under); it is registered with them, and a reader resolves them from the registry.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from pydantic import BaseModel

from kafkaworker.serialization.registry import RegistryCodec

try:
    from confluent_kafka.schema_registry import Schema as RegistrySchema
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.json_schema import JSONDeserializer, JSONSerializer
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    from kafkaworker.errors import ConfigError

    raise ConfigError(
        f"the json_schema codec needs jsonschema and the registry client ({exc.name} is "
        "missing): pip install 'kafkaworker[json_schema]'"
    ) from None

__all__ = ["JsonSchemaCodec"]

Schema = str | Mapping[str, Any] | type[BaseModel] | RegistrySchema


def schema_text(schema: Schema) -> str:
    """A JSON Schema as text: given as text, as a dict, as a pydantic model's, or a registry
    Schema's text."""
    if isinstance(schema, str):
        return schema
    if isinstance(schema, RegistrySchema):
        return schema.schema_str or ""
    if isinstance(schema, type) and issubclass(schema, BaseModel):
        return orjson.dumps(schema.model_json_schema()).decode()
    return orjson.dumps(dict(schema)).decode()


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value)


class JsonSchemaCodec(RegistryCodec):
    """JSON values checked against a JSON Schema in a Schema Registry.

    `schema` (JSON Schema text, a dict, a pydantic model class, or a registry Schema with
    `references` to other registered schemas) is what `encode_for` writes with; without it, a
    pydantic model value is written with its model's schema (one serializer, and one
    registration, per model class). Decodes to what the JSON says (dicts),
    after validating it against the writer's schema; a handler typed with a model gets the
    model. See RegistryCodec for `subject_strategy` and `auto_register`. `schema` is the
    given schema as text (None without one).
    """

    name = "json_schema"

    def __init__(
        self,
        registry: SchemaRegistryClient | Mapping[str, Any],
        *,
        schema: Schema | None = None,
        subject_strategy: str = "topic",
        auto_register: bool = True,
    ) -> None:
        super().__init__(registry, subject_strategy=subject_strategy, auto_register=auto_register)
        self.schema = schema_text(schema) if schema is not None else None
        # A registry Schema goes to the serializer as it is: its references are registered
        # with it (text alone would lose them).
        self._writer: str | RegistrySchema | None = (
            schema if isinstance(schema, RegistrySchema) else self.schema
        )
        self._serializers: dict[object, JSONSerializer] = {}
        self._deserializer = JSONDeserializer(
            None,
            schema_registry_client=self.registry,
            conf=self.deserializer_conf(),
            json_decode=orjson.loads,
        )

    def _decode(self, data: bytes) -> Any:
        return self._deserializer(data, None)

    def _serializer_for(self, value: Any) -> JSONSerializer:
        model = type(value) if isinstance(value, BaseModel) else None
        key: object = model if self.schema is None else None
        serializer = self._serializers.get(key)
        if serializer is None:
            text: str | RegistrySchema
            if self._writer is not None:
                text = self._writer
            elif model is not None:
                text = schema_text(model)
            else:
                raise TypeError(
                    "the json_schema codec needs schema= (a JSON Schema or a pydantic model) "
                    f"to encode a {type(value).__name__}, or a pydantic model value"
                )
            serializer = JSONSerializer(
                text, self.registry, conf=self.serializer_conf(), json_encode=_dumps
            )
            self._serializers[key] = serializer
        return serializer

    def _encode(self, topic: str, value: Any) -> bytes | None:
        serializer = self._serializer_for(value)
        if isinstance(value, BaseModel):
            value = value.model_dump(mode="json")
        encoded: bytes | None = serializer(value, self.context(topic))
        return encoded

    def record_name(self, value: Any) -> str | None:
        # The record strategies name a JSON Schema by its title (a pydantic model's is its
        # class name).
        try:
            text = self.schema or (
                schema_text(type(value)) if isinstance(value, BaseModel) else None
            )
            title = orjson.loads(text).get("title") if text else None
        except (orjson.JSONDecodeError, AttributeError):
            return None
        return str(title) if title is not None else None

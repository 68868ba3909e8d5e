"""What a handler's records hold, as AsyncAPI payloads: JSON Schema from the pydantic models of
its signature, the Avro or JSON Schema its codec was given, the .proto text of its Protobuf
class; what a codec cannot tell (a registry codec by name, a custom codec) is said in words.

pydantic writes JSON Schema 2020-12 with its own `$defs`; an AsyncAPI document resolves every
`$ref` from the document's root, so the definitions move to `components.schemas` (one call for
every model of the document, which gives two models of one name distinct keys) and the refs
follow them.
"""

from __future__ import annotations

import collections.abc
import inspect
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from kafkaworker.handlers import HandlerSpec, is_protobuf_message
from kafkaworker.message import Message
from kafkaworker.settings import Settings

AVRO_FORMAT = "application/vnd.apache.avro+json;version=1.9.0"
COMPONENT_SCHEMAS = "#/components/schemas/"
# confluent-kafka's subject name strategies, by the Kafka binding's names for them.
_LOOKUP_STRATEGIES = {
    "topic": "TopicIdStrategy",
    "record": "RecordIdStrategy",
    "topic_record": "TopicRecordIdStrategy",
}
_CONTENT_TYPES = {
    "json": "application/json",
    "text": "text/plain",
    "raw": "application/octet-stream",
    "avro": "application/vnd.apache.avro+binary",
    "json_schema": "application/json",
    "protobuf": "application/x-protobuf",
}
Mode = Literal["validation", "serialization"]


@dataclass
class Payload:
    """A message's payload as the document gives it, and how it is framed on the wire."""

    schema: dict[str, Any] | None
    content_type: str | None
    description: str
    # Written through a Schema Registry: the Confluent framing (magic byte, schema id) and
    # the subject name strategy, for the Kafka message binding.
    registry_strategy: str | None = None

    def binding(self) -> dict[str, Any]:
        """The Kafka message binding's fields about the schema id, when there is one."""
        if self.registry_strategy is None:
            return {}
        return {
            "schemaIdLocation": "payload",
            "schemaIdPayloadEncoding": "confluent",
            "schemaLookupStrategy": _LOOKUP_STRATEGIES.get(
                self.registry_strategy, "TopicIdStrategy"
            ),
        }


@dataclass
class Schemas:
    """components.schemas of one document. `model()` hands out a ref at once and fills it
    in `finish()`, when every model of the document is known."""

    components: dict[str, Any] = field(default_factory=dict)
    _pending: list[tuple[type[BaseModel], Mode, dict[str, Any]]] = field(default_factory=list)

    def model(self, model: type[BaseModel], mode: Mode) -> dict[str, Any]:
        ref: dict[str, Any] = {}
        self._pending.append((model, mode, ref))
        return ref

    def finish(self) -> dict[str, Any]:
        if self._pending:
            wanted = list(dict.fromkeys((model, mode) for model, mode, _ in self._pending))
            refs, top = models_json_schema(wanted, ref_template=COMPONENT_SCHEMAS + "{model}")
            for name, schema in top.get("$defs", {}).items():
                self.components[name] = asyncapi_schema(schema)
            for model, mode, ref in self._pending:
                ref.update(refs[(model, mode)])
        return self.components

    def hoisted(self, schema: Mapping[str, Any], prefix: str) -> dict[str, Any]:
        """A JSON Schema given as such (a JsonSchemaCodec's), its local definitions moved to
        components.schemas under `prefix`."""
        body = dict(schema)
        local: dict[str, Any] = {}
        for key in ("$defs", "definitions"):
            for name, definition in dict(body.pop(key, {})).items():
                local[f"#/{key}/{name}"] = (f"{prefix}.{name}", definition)
        moved = {old: COMPONENT_SCHEMAS + new for old, (new, _) in local.items()}
        for new, definition in local.values():
            self.components[new] = asyncapi_schema(_rerouted(definition, moved))
        converted: dict[str, Any] = asyncapi_schema(_rerouted(body, moved))
        return converted


def _rerouted(schema: Any, moved: Mapping[str, str]) -> Any:
    if isinstance(schema, Mapping):
        return {
            key: moved.get(value, value) if key == "$ref" else _rerouted(value, moved)
            for key, value in schema.items()
        }
    if isinstance(schema, list):
        return [_rerouted(item, moved) for item in schema]
    return schema


def _refers_outside(schema: Any) -> bool:
    """A `$ref` to another document (a registered schema's name): not resolvable here."""
    if isinstance(schema, Mapping):
        ref = schema.get("$ref")
        if isinstance(ref, str) and not ref.startswith("#"):
            return True
        return any(_refers_outside(value) for value in schema.values())
    if isinstance(schema, list):
        return any(_refers_outside(item) for item in schema)
    return False


def asyncapi_schema(schema: Any) -> Any:
    """`schema` in the AsyncAPI Schema's words (JSON Schema draft 07) where JSON Schema
    2020-12 (pydantic's) differs: `discriminator` is the property's name, not OpenAPI's
    object; a tuple's items are `items` as a list, not `prefixItems`."""
    if isinstance(schema, Mapping):
        converted = {key: asyncapi_schema(value) for key, value in schema.items()}
        discriminator = converted.get("discriminator")
        if isinstance(discriminator, Mapping):
            converted["discriminator"] = discriminator.get("propertyName")
        if "prefixItems" in converted:
            rest = converted.pop("items", None)
            converted["items"] = converted.pop("prefixItems")
            if rest is not None:
                converted["additionalItems"] = rest
        return converted
    if isinstance(schema, list):
        return [asyncapi_schema(item) for item in schema]
    return schema


def input_payload(spec: HandlerSpec, settings: Settings, schemas: Schemas) -> Payload:
    """What the handler's source records hold."""
    annotated = _first_parameter(spec.func, batch=spec.batch is not None)
    return _payload(spec, settings, schemas, annotated, mode="validation", where="its signature")


def output_payload(spec: HandlerSpec, settings: Settings, schemas: Schemas) -> Payload:
    """What the handler's outputs hold: its return annotation (an item of a returned list or
    generator), encoded with its codec."""
    annotated = _returned(spec.func)
    return _payload(
        spec, settings, schemas, annotated, mode="serialization", where="its return annotation"
    )


def _payload(
    spec: HandlerSpec,
    settings: Settings,
    schemas: Schemas,
    annotated: Any,
    *,
    mode: Mode,
    where: str,
) -> Payload:
    codec = spec.codec
    name = codec if isinstance(codec, str) else str(getattr(codec, "name", type(codec).__name__))
    content_type = _CONTENT_TYPES.get(name)
    model = annotated if _is_model(annotated) else None
    strategy = _registry_strategy(codec, settings) if name in _REGISTRY_CODECS else None
    if name == "avro":
        declared = getattr(codec, "reader_schema", None) or getattr(codec, "writer_schema", None)
        if declared:
            avro = {"schemaFormat": AVRO_FORMAT, "schema": orjson.loads(declared)}
            return Payload(avro, content_type, "Avro, as the codec's schema says", strategy)
    if name == "json_schema" and getattr(codec, "schema", None):
        given = orjson.loads(str(codec.schema))  # type: ignore[union-attr]
        if not _refers_outside(given):
            hoisted = schemas.hoisted(given, f"{spec.name}.{mode}")
            return Payload(hoisted, content_type, "JSON, as the codec's JSON Schema says", strategy)
        said = "JSON Schema with references to other registered schemas: see the registry"
        return Payload(None, content_type, said, strategy)
    if name == "protobuf":
        message_class = getattr(codec, "message_type", None) or (
            annotated if is_protobuf_message(annotated) else None
        )
        if message_class is not None:
            return _protobuf(message_class, content_type, strategy)
    if model is not None:
        described = f"{model.__name__}, the model of {where}"
        return Payload(schemas.model(model, mode), content_type, described, strategy)
    if name == "text":
        return Payload({"type": "string"}, content_type, "UTF-8 text")
    if name == "raw":
        return Payload({"type": "string", "format": "binary"}, content_type, "bytes, as given")
    if name in _REGISTRY_CODECS:
        said = f"{name}: each record's writer schema is in the Schema Registry"
        return Payload(None, content_type, f"{said} ({where} names no model)", strategy)
    if name == "json":
        return Payload(None, content_type, f"any JSON document ({where} names no model)")
    return Payload(None, content_type, f"encoded by the custom codec {name!r}")


_REGISTRY_CODECS = ("avro", "json_schema", "protobuf")


def _registry_strategy(codec: Any, settings: Settings) -> str:
    """The subject name strategy a registry codec registers and looks up under."""
    if not isinstance(codec, str):
        return str(getattr(codec, "subject_strategy", "topic"))
    config = settings.schema_registry.config if settings.schema_registry is not None else {}
    return str(config.get("subject.name.strategy", "topic")).replace("-", "_")


def _protobuf(message_class: Any, content_type: str | None, strategy: str | None) -> Payload:
    from kafkaworker.asyncapi.proto_text import UnprintableProtoError, proto_text  # noqa: PLC0415

    descriptor = message_class.DESCRIPTOR
    try:
        text = proto_text(descriptor)
    except UnprintableProtoError as exc:
        return Payload(None, content_type, f"Protobuf {descriptor.full_name}: {exc}", strategy)
    version = 2 if text.startswith('syntax = "proto2"') else 3
    schema = {"schemaFormat": f"application/vnd.google.protobuf;version={version}", "schema": text}
    return Payload(schema, content_type, f"Protobuf {descriptor.full_name}", strategy)


def _first_parameter(func: Callable[..., Any], *, batch: bool) -> Any:
    """The class a handler's records are decoded into: `def h(order: Order)`,
    `Message[Order]`, or a batch handler's `list[Message[Order]]`."""
    try:
        parameter = next(iter(inspect.signature(func).parameters.values()))
        annotation = typing.get_type_hints(func).get(parameter.name)
    except Exception:  # noqa: BLE001 - no usable signature: nothing to describe
        return None
    if batch:
        annotation = _only_argument(annotation)
    if typing.get_origin(annotation) is Message:
        annotation = _only_argument(annotation)
    return annotation


def _returned(func: Callable[..., Any]) -> Any:
    """The class of what a handler returns, or of each item of a returned list, iterator or
    generator; None in a union (nothing produced) is left out."""
    target = func if inspect.isfunction(func) or inspect.ismethod(func) else type(func).__call__
    try:
        annotation = typing.get_type_hints(target).get("return")
    except Exception:  # noqa: BLE001 - unresolvable: nothing to describe
        return None
    members = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, _UNION) and len(members) == 1:
        annotation = members[0]
    if typing.get_origin(annotation) in _SEQUENCES:
        annotation = (typing.get_args(annotation) or (None,))[0]
    return annotation


_UNION = type(int | None)
_SEQUENCES = (
    list,
    tuple,
    collections.abc.Iterable,
    collections.abc.Iterator,
    collections.abc.Generator,
    collections.abc.Sequence,
)


def _only_argument(annotation: Any) -> Any:
    arguments = typing.get_args(annotation)
    return arguments[0] if arguments else None


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)

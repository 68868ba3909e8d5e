"""Codecs: how a handler's message values are decoded from bytes (and encoded back).

A codec is any object with `decode(data, headers)` and `encode(value)`; the built-in ones are
registered by name: "json" (orjson, the default), "raw" (bytes) and "text" (UTF-8); "avro",
"json_schema" and "protobuf" go through a Schema Registry (registry.py).
A Kafka null value (a tombstone) decodes to None with every codec. A codec that never reads
headers may say so with `uses_headers = False`, sparing the runtime building the list.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import orjson
from pydantic import BaseModel

Headers = Sequence[tuple[str, bytes | None]]


@runtime_checkable
class Codec(Protocol):
    """Decode a payload into the value a handler sees; encode a value into a payload."""

    name: str

    def decode(self, data: bytes, headers: Headers) -> Any: ...

    def encode(self, value: Any) -> bytes: ...


class JsonCodec:
    name = "json"
    uses_headers = False

    def decode(self, data: bytes, headers: Headers) -> Any:
        if not data:
            # orjson's own message ("Input is a zero-length, empty document") is less clear.
            raise ValueError("empty value is not JSON")
        return orjson.loads(data)

    def encode(self, value: Any) -> bytes:
        if isinstance(value, BaseModel):
            return value.model_dump_json().encode()
        return orjson.dumps(value)


class RawCodec:
    name = "raw"
    uses_headers = False

    def decode(self, data: bytes, headers: Headers) -> bytes:
        return data

    def encode(self, value: Any) -> bytes:
        if not isinstance(value, bytes | bytearray | memoryview):
            raise TypeError(f"the raw codec encodes bytes, not {type(value).__name__}")
        return bytes(value)


class TextCodec:
    name = "text"
    uses_headers = False

    def decode(self, data: bytes, headers: Headers) -> str:
        return data.decode("utf-8")

    def encode(self, value: Any) -> bytes:
        if not isinstance(value, str):
            raise TypeError(f"the text codec encodes str, not {type(value).__name__}")
        return value.encode("utf-8")


CODECS: dict[str, Codec] = {codec.name: codec for codec in (JsonCodec(), RawCodec(), TextCodec())}
# Codecs that need something only the running app has (a Schema Registry client): named in a
# handler, built by the runtime (kafkaworker.serialization.named.runtime_codecs).
RUNTIME_CODECS = frozenset({"avro", "json_schema", "protobuf"})


def get_codec(codec: str | Codec) -> Codec:
    """The codec registered under `codec`, or `codec` itself when it already is one."""
    if isinstance(codec, str):
        try:
            return CODECS[codec]
        except KeyError:
            if codec in RUNTIME_CODECS:
                raise LookupError(
                    f"the {codec!r} codec needs a Schema Registry: pass a codec object "
                    "(AvroCodec, JsonSchemaCodec or ProtobufCodec from kafkaworker.serialization"
                    ".avro, .json_schema, .protobuf), or run the handler with "
                    "schema_registry.url in the settings"
                ) from None
            raise LookupError(
                f"unknown codec {codec!r}: allowed are "
                f"{', '.join(sorted({*CODECS, *RUNTIME_CODECS}))} "
                "or an object with decode(data, headers) and encode(value)"
            ) from None
    if isinstance(codec, Codec):
        return codec
    raise LookupError(f"codec {codec!r} is neither a codec name nor a Codec object")

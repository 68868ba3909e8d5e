"""What the codec contenders share: the format's codec, made the same way for the raw loop and
for kafkaworker (the registry client with kafkaworker's defaults, the same serializer
configuration), so the rows compare the runtimes, not two decoders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kafkaworker.serialization.avro import AvroCodec
from kafkaworker.serialization.json_schema import JsonSchemaCodec
from kafkaworker.serialization.protobuf import ProtobufCodec, message_class_from_proto

PROTO = Path(__file__).with_name("bench.proto")


def codec_for(fmt: str, url: str) -> Any:
    """kafkaworker's codec object for `fmt` (None: the default JSON codec)."""
    if fmt == "json":
        return None
    if fmt == "avro":
        return AvroCodec({"url": url})
    if fmt == "json_schema":
        return JsonSchemaCodec({"url": url})
    return ProtobufCodec({"url": url}, message_class_from_proto(PROTO))

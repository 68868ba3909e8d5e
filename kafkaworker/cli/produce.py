"""`kafkaworker produce TOPIC`: one message per line of standard input."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import orjson

from kafkaworker import clients
from kafkaworker.cli.common import SETTINGS_OPTION, one_line, settings_from
from kafkaworker.errors import (
    ConfigError,
    KafkaWorkerError,
    SchemaRefused,
    SchemaRegistryUnavailable,
    StartupError,
)
from kafkaworker.ops import KafkaAdmin
from kafkaworker.producer import Producer
from kafkaworker.settings import Settings

if TYPE_CHECKING:
    from kafkaworker.serialization.registry import RegistryCodec

REGISTRY_CODECS = ("avro", "json_schema", "protobuf")


@click.command()
@click.argument("topic")
@click.option("--key", help="the key of every message")
@click.option(
    "--key-separator",
    metavar="SEP",
    help="each line is KEY SEP VALUE, split at the first SEP (TAB: a tab), as "
    "kafka-console-producer's parse.key and key.separator",
)
@click.option(
    "--key-field",
    metavar="NAME",
    help="the key of each message is this field of its JSON document",
)
@click.option(
    "--codec",
    type=click.Choice(["json", "text", "raw", *REGISTRY_CODECS]),
    default="json",
    show_default=True,
    help="json: each line must be a JSON document; avro, json_schema, protobuf: each line is "
    "a JSON document written with --schema through the Schema Registry (schema_registry.url)",
)
@click.option(
    "--schema",
    "schema_path",
    type=click.Path(path_type=Path),
    help="the writer schema of --codec avro (.avsc), json_schema (.json) or protobuf (.proto)",
)
@click.option("--message", help="--codec protobuf: the message of the .proto (default: its first)")
@click.option("--header", "headers", multiple=True, metavar="K=V", help="a header (repeatable)")
@click.option(
    "--parse-headers",
    is_flag=True,
    help="each line starts with its own headers, K:V,K2:V2 then a tab, as "
    "kafka-console-producer's parse.headers (before the key, with --key-separator)",
)
@SETTINGS_OPTION
def produce(  # noqa: PLR0917 - click passes every option by position
    topic: str,
    key: str | None,
    key_separator: str | None,
    key_field: str | None,
    codec: str,
    schema_path: Path | None,
    message: str | None,
    headers: tuple[str, ...],
    parse_headers: bool,
    settings_path: str | None,
) -> None:
    """Produce one message per line of standard input to TOPIC; blank lines are skipped.
    Prints how many were sent; a line that cannot be sent stops it there, naming the line."""
    lines = Lines(
        codec,
        key=key,
        key_separator={"TAB": "\t"}.get(key_separator or "", key_separator),
        key_field=key_field,
        headers=[_header(text) for text in headers],
        parse_headers=parse_headers,
    )
    if (schema_path is not None) != (codec in REGISTRY_CODECS):
        raise click.UsageError(
            f"--codec {codec} needs --schema FILE"
            if schema_path is None
            else f"--schema is for --codec {', '.join(REGISTRY_CODECS)}, not {codec}"
        )
    if message is not None and codec != "protobuf":
        raise click.UsageError("--message is for --codec protobuf")
    with one_line():
        settings = settings_from(settings_path)
        encode = (
            _registry_encoder(codec, schema_path, message, settings)
            if schema_path is not None
            else None
        )
        # Asked before reading a line: a producer would only say "Message timed out" after
        # delivery.timeout.ms, and an unreachable cluster is told in one line.
        with KafkaAdmin(settings) as admin:
            if not admin.exists(topic):
                raise StartupError(
                    f"topic {topic!r} does not exist on {settings.kafka.bootstrap_servers}: "
                    f"create it (kafkaworker topics create {topic} --partitions N)"
                )
        producer = Producer(settings, client_id="kafkaworker.produce")
    futures = []
    bad: str | None = None
    try:
        for number, line in enumerate(sys.stdin.buffer, start=1):
            try:
                parsed = lines.parse(line.rstrip(b"\r\n"), topic, encode)
            except BadLine as exc:
                bad = f"line {number} {exc}; nothing from it on was sent"
                break
            if parsed is not None:
                payload, record_key, record_headers = parsed
                futures.append(
                    producer.send(topic, payload, key=record_key, headers=record_headers)
                )
        failed, last_error = 0, ""
        for future in futures:
            try:
                clients.result(future, 60)
            except KafkaWorkerError as exc:
                failed += 1
                last_error = str(exc)
    finally:
        producer.close()
    click.echo(f"produced {len(futures) - failed} message(s) to {topic}")
    if failed:
        raise click.ClickException(f"{failed} message(s) were not delivered: {last_error}")
    if bad is not None:
        raise click.ClickException(bad)


class BadLine(Exception):  # noqa: N818 - read as "line N <what is wrong>"
    """What is wrong with one line of input, worded to follow "line N"."""


class Lines:
    """How a line of input becomes a record: its headers, its key, its value."""

    def __init__(
        self,
        codec: str,
        *,
        key: str | None,
        key_separator: str | None,
        key_field: str | None,
        headers: list[tuple[str, bytes]],
        parse_headers: bool,
    ) -> None:
        if sum(option is not None for option in (key, key_separator, key_field)) > 1:
            raise click.UsageError("give one of --key, --key-separator, --key-field")
        if key_field is not None and codec in ("text", "raw"):
            raise click.UsageError(f"--key-field reads a JSON document, not --codec {codec}")
        if key_separator == "":
            raise click.UsageError("--key-separator cannot be empty")
        self.codec = codec
        self.key = key
        self.key_separator = key_separator.encode() if key_separator is not None else None
        self.key_field = key_field
        self.headers = headers
        self.parse_headers = parse_headers

    def parse(
        self, line: bytes, topic: str, encode: Callable[[str, Any], bytes] | None
    ) -> tuple[bytes, bytes | str | None, list[tuple[str, bytes]]] | None:
        """(value, key, headers) of `line`; None for a blank line. Raises BadLine."""
        if not line.strip():
            return None
        headers = list(self.headers)
        if self.parse_headers:
            found, sep, line = line.partition(b"\t")
            if not sep:
                raise BadLine("has no tab after its headers (--parse-headers: K:V,K2:V2<TAB>)")
            headers += [_line_header(text) for text in found.decode().split(",") if text]
        key: bytes | str | None = self.key
        if self.key_separator is not None:
            key, sep, line = line.partition(self.key_separator)
            if not sep:
                raise BadLine(f"has no key separator {self.key_separator.decode()!r}")
        value = self._value(line, topic, encode)
        if self.key_field is not None:
            document = orjson.loads(line)
            if not isinstance(document, dict) or self.key_field not in document:
                raise BadLine(f"has no field {self.key_field!r} for --key-field")
            field = document[self.key_field]
            key = field if isinstance(field, str) else orjson.dumps(field).decode()
        return value, key, headers

    def _value(self, line: bytes, topic: str, encode: Callable[[str, Any], bytes] | None) -> bytes:
        if self.codec == "text":
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                raise BadLine("is not UTF-8: use --codec raw") from None
        if self.codec in ("text", "raw"):
            return line
        try:
            document = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            # orjson's own "line 1 column 5" would be read as the input's line.
            hint = "; or use --codec text" if self.codec == "json" else ""
            raise BadLine(f"is not JSON: {exc.msg} at column {exc.colno}{hint}") from None
        if encode is None:
            return line
        try:
            return encode(topic, document)
        except (SchemaRefused, SchemaRegistryUnavailable) as exc:
            raise BadLine(f"was refused: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - the value does not fit the schema
            raise BadLine(f"does not match the schema: {_one_line(exc)}") from None


def _registry_encoder(
    codec: str, schema_path: Path, message: str | None, settings: Settings
) -> Callable[[str, Any], bytes]:
    """encode(topic, decoded JSON line) in `codec` with the schema of `schema_path`, through
    the settings' Schema Registry (asked once now: a registry that is down is one line)."""
    if settings.schema_registry is None:
        raise ConfigError(
            f"--codec {codec} needs a Schema Registry: set schema_registry.url in the settings "
            "(KAFKAWORKER_SCHEMA_REGISTRY__URL)"
        )
    # Imported here: each format needs its own optional packages.
    from kafkaworker.serialization.named import settings_client  # noqa: PLC0415

    # As a handler's or a send's codec of this name: the settings' client and options.
    client, options = settings_client(
        None, settings.schema_registry.url, settings.schema_registry.config
    )
    if codec == "protobuf":
        from google.protobuf import json_format  # noqa: PLC0415

        from kafkaworker.serialization.protobuf import (  # noqa: PLC0415
            ProtobufCodec,
            message_class_from_proto,
        )

        message_class = message_class_from_proto(schema_path, message)
        proto = ProtobufCodec(client, message_class, **options)
        proto.check_reachable()

        def encode_message(topic: str, value: Any) -> bytes:
            return proto.encode_for(topic, json_format.ParseDict(value, message_class()))

        return encode_message
    try:
        text = schema_path.read_text()
        orjson.loads(text)
    except OSError as exc:
        raise ConfigError(f"cannot read --schema {schema_path}: {exc.strerror}") from None
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"--schema {schema_path} is not JSON ({exc}): fix it") from None
    found: RegistryCodec
    if codec == "avro":
        from kafkaworker.serialization.avro import AvroCodec  # noqa: PLC0415

        found = AvroCodec(client, writer_schema=text, **options)
    else:
        from kafkaworker.serialization.json_schema import JsonSchemaCodec  # noqa: PLC0415

        found = JsonSchemaCodec(client, schema=text, **options)
    found.check_reachable()
    return found.encode_for


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:300] + "..."


def _line_header(text: str) -> tuple[str, bytes]:
    name, sep, value = text.partition(":")
    if not sep or not name:
        raise BadLine(f"has a header {text!r} that is not K:V")
    return name, value.encode()


def _header(text: str) -> tuple[str, bytes]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise click.BadParameter(f"{text!r} is not K=V", param_hint="--header")
    return name, value.encode()

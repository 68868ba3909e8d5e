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
@SETTINGS_OPTION
def produce(  # noqa: PLR0917 - click passes every option by position
    topic: str,
    key: str | None,
    codec: str,
    schema_path: Path | None,
    message: str | None,
    headers: tuple[str, ...],
    settings_path: str | None,
) -> None:
    """Produce one message per line of standard input to TOPIC."""
    parsed_headers = [_header(text) for text in headers]
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
            payload = line.rstrip(b"\r\n")
            if codec == "json":
                try:
                    orjson.loads(payload)
                except orjson.JSONDecodeError as exc:
                    bad = (
                        f"line {number} is not JSON ({exc}): nothing from it on was sent; "
                        "fix it, or use --codec text"
                    )
                    break
            elif encode is not None:
                try:
                    payload = encode(topic, orjson.loads(payload))
                except orjson.JSONDecodeError as exc:
                    bad = f"line {number} is not JSON ({exc}): nothing from it on was sent"
                    break
                except (SchemaRefused, SchemaRegistryUnavailable) as exc:
                    bad = f"line {number}: {exc}; nothing from it on was sent"
                    break
                except Exception as exc:  # noqa: BLE001 - the value does not fit the schema
                    bad = (
                        f"line {number} does not match the schema ({_one_line(exc)}): "
                        "nothing from it on was sent"
                    )
                    break
            elif codec == "text":
                try:
                    payload.decode("utf-8")
                except UnicodeDecodeError:
                    bad = (
                        f"line {number} is not UTF-8: nothing from it on was sent; use --codec raw"
                    )
                    break
            futures.append(producer.send(topic, payload, key=key, headers=parsed_headers))
        failed, last_error = 0, ""
        for future in futures:
            try:
                clients.result(future, 60)
            except KafkaWorkerError as exc:
                failed += 1
                last_error = str(exc)
    finally:
        producer.close()
    click.echo(f"produced {len(futures) - failed} message(s) to {topic}", err=True)
    if failed:
        raise click.ClickException(f"{failed} message(s) were not delivered: {last_error}")
    if bad is not None:
        raise click.ClickException(bad)


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
    from kafkaworker.serialization import registry  # noqa: PLC0415

    config = dict(settings.schema_registry.config)
    auto_register = bool(config.pop("auto.register.schemas", True))
    strategy = str(config.pop("subject.name.strategy", "topic"))
    client = registry.registry_client({"url": settings.schema_registry.url, **config})
    options: dict[str, Any] = {"subject_strategy": strategy, "auto_register": auto_register}
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


def _header(text: str) -> tuple[str, bytes]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise click.BadParameter(f"{text!r} is not K=V", param_hint="--header")
    return name, value.encode()

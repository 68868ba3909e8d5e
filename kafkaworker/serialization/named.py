"""Codecs named in handlers ("avro", "json_schema", "protobuf"), built once per process on one
Schema Registry client so that they share its cache of schemas by id. Apart from registry.py,
which each format's module builds on: building them by name needs every format's module."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from confluent_kafka.schema_registry import SchemaRegistryClient

from kafkaworker.errors import ConfigError
from kafkaworker.serialization.registry import (
    RegistryCodec,
    registry_client,
    subject_strategy_type,
)

# Serializer properties that may stand in schema_registry.config beside the client's; the
# runner's codecs take them, the client (which refuses unknown properties) never sees them.
_CODEC_PROPERTIES = ("auto.register.schemas", "subject.name.strategy")


def settings_client(
    registry: SchemaRegistryClient | Mapping[str, Any] | None,
    url: str | None,
    config: Mapping[str, Any] | None,
) -> tuple[SchemaRegistryClient, dict[str, Any]]:
    """The client the settings' schema_registry names (or `registry`, the app's own), and
    the codec options its config holds beside the client's (`subject_strategy`,
    `auto_register`): how every codec named by a handler, a send or `kafkaworker produce`
    is built, so they register and look up schemas alike."""
    options = dict(config or {})
    codec_options = {key: options.pop(key) for key in _CODEC_PROPERTIES if key in options}
    if registry is None:
        if url is None:
            raise ConfigError(
                "a Schema Registry codec needs schema_registry.url in the settings "
                "(KAFKAWORKER_SCHEMA_REGISTRY__URL)"
            )
        registry = {"url": url, **options}
    auto_register = codec_options.get("auto.register.schemas", True)
    if not isinstance(auto_register, bool):
        raise ConfigError(
            f"schema_registry.config auto.register.schemas={auto_register!r} is invalid: "
            "true (development) or false (production: schemas registered by review and CI)"
        )
    strategy = str(codec_options.get("subject.name.strategy", "topic"))
    subject_strategy_type(strategy)  # one line naming the allowed strategies
    return registry_client(registry), {"subject_strategy": strategy, "auto_register": auto_register}


def runtime_codecs(
    users: Mapping[str, str],
    registry: SchemaRegistryClient | Mapping[str, Any] | None,
    url: str | None,
    config: Mapping[str, Any] | None = None,
) -> dict[str, RegistryCodec]:
    """The codecs named by handlers (`users`: handler name -> "avro", "json_schema" or
    "protobuf") on one registry client, so they share its cache of schemas by id.

    `registry`: the app's own client (App.schema_registry), else a client is made from
    `url` (settings schema_registry.url) and `config`, whose `auto.register.schemas` (default
    true) and `subject.name.strategy` ("topic", "record" or "topic_record") configure the
    codecs. Each codec binds to its handlers at start-up (RegistryCodec.for_handler).
    """
    if not users:
        return {}
    if registry is None and url is None:
        handler, codec = next(iter(users.items()))
        raise ConfigError(
            f"handler {handler!r} uses codec {codec!r} but schema_registry.url is not set: "
            "add it to the settings (KAFKAWORKER_SCHEMA_REGISTRY__URL)"
        )
    client, options = settings_client(registry, url, config)
    strategy, auto_register = options["subject_strategy"], options["auto_register"]
    # Imported here: each format needs its own optional packages, asked for only when used.
    built: dict[str, RegistryCodec] = {}
    for name in sorted(set(users.values())):
        if name == "avro":
            from kafkaworker.serialization.avro import AvroCodec  # noqa: PLC0415

            built[name] = AvroCodec(client, subject_strategy=strategy, auto_register=auto_register)
        elif name == "json_schema":
            from kafkaworker.serialization.json_schema import JsonSchemaCodec  # noqa: PLC0415

            built[name] = JsonSchemaCodec(
                client, subject_strategy=strategy, auto_register=auto_register
            )
        elif name == "protobuf":
            from kafkaworker.serialization.protobuf import ProtobufCodec  # noqa: PLC0415

            built[name] = ProtobufCodec(
                client, subject_strategy=strategy, auto_register=auto_register
            )
        else:
            raise ConfigError(f"codec {name!r} is not a Schema Registry codec")
    return built

"""What the Schema Registry codecs (avro, json_schema, protobuf) share: the client, the subject
name strategies, the start-up check and what a registry's failure becomes.

Needs the registry client: `pip install 'kafkaworker[avro]'` (and the json_schema or protobuf
extras for those formats). Every codec writes the Confluent wire format (magic byte 0, the
4-byte schema id, for Protobuf the message indexes, then the payload) through
confluent_kafka.schema_registry's serializers, whose client caches schemas by id: one registry
request per schema id per process.

A registry's failures are sorted by what a retry can change:
- it did not answer (refused, timed out, HTTP 5xx, 401/403): `SchemaRegistryUnavailable`, not
  fatal, so a record whose schema is not cached yet is retried with backoff, never
  dead-lettered for the registry's sake; records with cached schemas never ask it; a 401/403
  says the credentials were refused and which setting to check (at start-up, a StartupError);
- the record is bad (wrong magic byte, a schema id the registry does not know, a payload that
  fails the writer's schema): a plain error that Message.value makes a fatal
  DeserializationError (the DLQ after one attempt, the raw bytes kept);
- a schema refused at registration (HTTP 409 incompatible, 422 invalid): `SchemaRefused`,
  naming the subject and the compatibility rule, raised by `send`/`send_sync`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from kafkaworker.errors import (
    ConfigError,
    SchemaRefused,
    SchemaRegistryUnavailable,
    StartupError,
)
from kafkaworker.settings_sources import without_user_info

if TYPE_CHECKING:
    from kafkaworker.handlers import HandlerSpec

try:
    from confluent_kafka.schema_registry import (
        SchemaRegistryClient,
        record_subject_name_strategy,
        topic_record_subject_name_strategy,
        topic_subject_name_strategy,
    )

    # The transport errors the client re-raises (connection refused, timeouts) are httpx's
    # (or httpx2's: the client picks whichever is installed, and says which here).
    from confluent_kafka.schema_registry.common._httpx_compat import httpx
    from confluent_kafka.schema_registry.error import SchemaRegistryError
    from confluent_kafka.serialization import MessageField, SerializationContext
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ConfigError(
        f"the Schema Registry codecs need the registry client ({exc.name} is missing): "
        "pip install 'kafkaworker[avro]'"
    ) from None

SubjectStrategy = Literal["topic", "record", "topic_record"]
# confluent-kafka's own strategies, by the names kafkaworker's settings and codecs use.
SUBJECT_STRATEGIES: dict[str, Callable[[SerializationContext | None, str | None], str | None]] = {
    "topic": topic_subject_name_strategy,  # <topic>-value: one schema lineage per topic
    "record": record_subject_name_strategy,  # <record name>: one lineage per record type
    "topic_record": topic_record_subject_name_strategy,  # <topic>-<record name>
}
# The serializers' names for them (subject.name.strategy.type). Set explicitly: their default,
# the "associated" strategy, asks the registry for associations first, which a Confluent
# registry older than 8.x and Apicurio do not have.
_STRATEGY_TYPES = {"topic": "TOPIC", "record": "RECORD", "topic_record": "TOPIC_RECORD"}

# Without a timeout the client waits forever on a registry that accepted the connection and
# never answers (Apicurio 3.3 left 4 requests of 320 so here): a hang instead of an error.
DEFAULT_TIMEOUT = 10.0
# The client's own default is 3 retries waiting 1-20 s each: a dead registry would hold a
# worker thread for a minute per record. One retry here; the handler's backoff does the rest.
DEFAULT_MAX_RETRIES = 1

_AUTH_STATUSES = frozenset({401, 403})
_UNAVAILABLE_STATUSES = _AUTH_STATUSES | {408, 429}
_CHECK_CREDENTIALS = "check schema_registry.config basic.auth.user.info"


def _refused_credentials(client: SchemaRegistryClient, status: int) -> str:
    """What a 401/403 means, naming the URL (never the credentials)."""
    return f"the Schema Registry at {safe_url(client)} refused the credentials (HTTP {status})"


def subject_strategy_type(strategy: str) -> str:
    """The serializer's subject.name.strategy.type for `strategy`, or a one-line ConfigError."""
    try:
        return _STRATEGY_TYPES[strategy.replace("-", "_")]
    except (KeyError, AttributeError):
        raise ConfigError(
            f"subject_strategy={strategy!r} is invalid: allowed are "
            f"{', '.join(_STRATEGY_TYPES)} (the topic strategy, <topic>-value, is the default)"
        ) from None


def subject_for(strategy: str, topic: str, record_name: str | None) -> str | None:
    """The subject a value of `record_name` produced to `topic` is registered under."""
    func = SUBJECT_STRATEGIES[strategy.replace("-", "_")]
    return func(SerializationContext(topic, MessageField.VALUE), record_name)


def registry_client(registry: SchemaRegistryClient | Mapping[str, Any]) -> SchemaRegistryClient:
    """A client from a config ({"url": ..., "basic.auth.user.info": ...}), or the client given.

    A config without `timeout` gets DEFAULT_TIMEOUT (seconds) and without `max.retries`
    DEFAULT_MAX_RETRIES. `mock://` URLs give confluent-kafka's in-memory registry, for unit
    tests only; each mock client has its own schemas, so a producer and a consumer must share
    one instance to talk.
    """
    if isinstance(registry, Mapping):
        conf = {"timeout": DEFAULT_TIMEOUT, "max.retries": DEFAULT_MAX_RETRIES, **registry}
        return SchemaRegistryClient.new_client(conf)
    return registry


def _conf(client: SchemaRegistryClient) -> Mapping[str, Any]:
    # The client keeps the config it was made from; a client of another kind may not.
    conf = getattr(client, "_conf", None)
    return conf if isinstance(conf, Mapping) else {}


def safe_url(client: SchemaRegistryClient) -> str:
    """The registry's URL(s) for messages: user info (user:password@) never included."""
    return without_user_info(str(_conf(client).get("url", "the Schema Registry")))


def _scrub(client: SchemaRegistryClient, text: str) -> str:
    """`text` without the client's secrets (an exception's text may quote a URL with them)."""
    conf = _conf(client)
    secrets = [str(conf.get("basic.auth.user.info", "")), str(conf.get("ssl.key.password", ""))]
    for url in str(conf.get("url", "")).split(","):
        parts = urlsplit(url.strip())
        secrets += [parts.password or "", parts.username or ""]
    for secret in secrets:
        for piece in (secret, *secret.split(":", 1)):
            if len(piece) >= 3:
                text = text.replace(piece, "***")
    return text


def is_mock(client: SchemaRegistryClient) -> bool:
    return str(_conf(client).get("url", "")).startswith("mock://")


def check_reachable(client: SchemaRegistryClient) -> None:
    """One small request at start-up (the global compatibility level): a registry that is
    down, or refuses the credentials, is one StartupError naming the URL, not a failure of
    the first record."""
    if is_mock(client):
        return
    url = safe_url(client)
    try:
        client.get_compatibility()
    except SchemaRegistryError as exc:
        if exc.http_status_code in _AUTH_STATUSES:
            raise StartupError(
                f"{_refused_credentials(client, exc.http_status_code)}: {_CHECK_CREDENTIALS}"
            ) from None
        raise StartupError(
            f"the Schema Registry at {url} answered HTTP {exc.http_status_code} (error code "
            f"{exc.error_code}) to GET /config: check that schema_registry.url is the "
            "registry's Confluent-compatible API"
        ) from None
    except (httpx.TransportError, OSError) as exc:
        raise StartupError(
            f"cannot reach the Schema Registry at {url} ({_reason(client, exc)}): check "
            "schema_registry.url and that the registry is up"
        ) from None


def _reason(client: SchemaRegistryClient, exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return _scrub(client, text if len(text) <= 200 else text[:200] + "...")


def schema_id(data: bytes) -> int | None:
    """The schema id of a Confluent-framed payload (None when it is not framed)."""
    if len(data) >= 5 and data[0] == 0:
        return int.from_bytes(data[1:5], "big")
    return None


def decode_failure(client: SchemaRegistryClient, exc: Exception, data: bytes) -> Exception:
    """What a deserializer's exception becomes: SchemaRegistryUnavailable when the registry did
    not answer (retried), a one-line ValueError when the record is bad (fatal once
    Message.value wraps it), other errors (wrong magic byte, invalid payload) as they are."""
    if isinstance(exc, SchemaRegistryError):
        status = exc.http_status_code
        if status in _AUTH_STATUSES:
            # Credentials rotated under a running worker: retried, the records kept.
            return SchemaRegistryUnavailable(
                f"{_refused_credentials(client, status)} for schema id {schema_id(data)}: "
                f"{_CHECK_CREDENTIALS}; retried with backoff"
            )
        if status >= 500 or status in _UNAVAILABLE_STATUSES:
            return SchemaRegistryUnavailable(
                f"the Schema Registry at {safe_url(client)} answered HTTP {status} (error code "
                f"{exc.error_code}) for schema id {schema_id(data)}; retried with backoff"
            )
        return ValueError(
            f"schema id {schema_id(data)} is unknown to the Schema Registry at "
            f"{safe_url(client)} (HTTP {status}, error code {exc.error_code})"
        )
    if isinstance(exc, httpx.TransportError | OSError):
        return SchemaRegistryUnavailable(
            f"the Schema Registry at {safe_url(client)} did not answer for schema id "
            f"{schema_id(data)} ({_reason(client, exc)}); retried with backoff"
        )
    return exc


def encode_failure(
    client: SchemaRegistryClient, exc: Exception, subject: str | None, *, auto_register: bool
) -> Exception:
    """What a serializer's exception becomes: SchemaRefused for a refused registration (naming
    the subject and its compatibility rule), SchemaRegistryUnavailable when the registry did
    not answer, other errors (a value the schema does not accept) as they are."""
    named = repr(subject) if subject is not None else "(no subject: the record has no name)"
    if isinstance(exc, SchemaRegistryError):
        status, code = exc.http_status_code, exc.error_code
        if status == 409:
            rule = _compatibility(client, subject)
            return SchemaRefused(
                f"the Schema Registry refused the schema for subject {named}: not {rule} "
                f"compatible with its registered versions (HTTP 409, error code {code}); make "
                "the change compatible or use another subject"
            )
        if status == 422:
            return SchemaRefused(
                f"the Schema Registry refused the schema for subject {named} as invalid "
                f"(HTTP 422, error code {code}): fix the schema"
            )
        if status == 404 and not auto_register:
            return SchemaRefused(
                f"the schema is not registered under subject {named} and auto_register is off "
                f"(HTTP 404, error code {code}): register it first, or set "
                "schema_registry.auto_register (development only)"
            )
        if status in _AUTH_STATUSES:
            return SchemaRegistryUnavailable(
                f"{_refused_credentials(client, status)} for subject {named}: {_CHECK_CREDENTIALS}"
            )
        if status >= 500 or status in _UNAVAILABLE_STATUSES:
            return SchemaRegistryUnavailable(
                f"the Schema Registry at {safe_url(client)} answered HTTP {status} (error code "
                f"{code}) for subject {named}"
            )
        return SchemaRefused(
            f"the Schema Registry answered HTTP {status} (error code {code}) for subject {named}"
        )
    if isinstance(exc, httpx.TransportError | OSError):
        return SchemaRegistryUnavailable(
            f"the Schema Registry at {safe_url(client)} did not answer for subject {named} "
            f"({_reason(client, exc)})"
        )
    return exc


def _compatibility(client: SchemaRegistryClient, subject: str | None) -> str:
    """The subject's compatibility level, else the registry's (only asked on a refusal)."""
    for name in ([subject] if subject is not None else []) + [None]:
        try:
            return str(client.get_compatibility(name))
        except Exception:  # noqa: BLE001 - no level of the subject's: the global one
            continue
    return "its compatibility level's"


class RegistryCodec:
    """The part of the avro, json_schema and protobuf codecs that is not the format's.

    `subject_strategy`: where a writer schema is registered, "topic" (<topic>-value, the
    default), "record" (the record's full name) or "topic_record" (<topic>-<record name>): one
    codec per handler or per send, so each sets its own. `auto_register`: register a writer
    schema the subject lacks when producing (the default: fine for development); with False the
    schema must already be registered (production, where schemas go through review and CI),
    else `send` fails naming the subject.
    """

    name = "registry"
    uses_headers = False

    def __init__(
        self,
        registry: SchemaRegistryClient | Mapping[str, Any],
        *,
        subject_strategy: str = "topic",
        auto_register: bool = True,
    ) -> None:
        self.registry = registry_client(registry)
        self._strategy_type = subject_strategy_type(subject_strategy)
        self.subject_strategy = subject_strategy.replace("-", "_")
        self.auto_register = auto_register
        self._checked = False

    def serializer_conf(self) -> dict[str, Any]:
        return {
            "auto.register.schemas": self.auto_register,
            "subject.name.strategy.type": self._strategy_type,
        }

    @staticmethod
    def deserializer_conf() -> dict[str, Any]:
        # The record strategy needs no topic, which decode(data, headers) does not get; a
        # reader's subject only matters for use.latest.version and rules, used by neither.
        return {"subject.name.strategy.type": "RECORD"}

    def check_reachable(self) -> None:
        """Once per codec, at a handler's start-up: see check_reachable()."""
        if not self._checked:
            check_reachable(self.registry)
            self._checked = True

    def for_handler(self, spec: HandlerSpec) -> RegistryCodec:
        """The codec a handler runs with (HandlerSpec.value_codec calls it at start-up): the
        registry is asked once, so that a registry that is down or refuses the credentials is
        one start-up error naming the URL."""
        self.check_reachable()
        return self

    def decode(self, data: bytes, headers: Any) -> Any:
        try:
            return self._decode(data)
        except Exception as exc:
            raise decode_failure(self.registry, exc, data) from exc

    def encode(self, value: Any) -> bytes:
        raise TypeError(
            f"the {self.name} codec encodes for a topic (its subject): use encode_for(topic, value)"
        )

    def encode_for(self, topic: str, value: Any) -> bytes:
        """`value` in the wire format, its schema registered (or looked up) under its subject."""
        try:
            encoded = self._encode(topic, value)
        except Exception as exc:
            subject = subject_for(self.subject_strategy, topic, self.record_name(value))
            raise encode_failure(
                self.registry, exc, subject, auto_register=self.auto_register
            ) from exc
        if encoded is None:  # pragma: no cover - serializers return None for None only
            raise TypeError(f"the {self.name} codec produced no bytes for {type(value).__name__}")
        return encoded

    def _decode(self, data: bytes) -> Any:
        raise NotImplementedError

    def _encode(self, topic: str, value: Any) -> bytes | None:
        raise NotImplementedError

    def record_name(self, value: Any) -> str | None:
        """The record's full name, for the record strategies' subjects (None if unknown)."""
        return None

    def context(self, topic: str) -> SerializationContext:
        return SerializationContext(topic, MessageField.VALUE)

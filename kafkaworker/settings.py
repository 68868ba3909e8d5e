"""Settings: library defaults < decorator arguments < settings.yaml < KAFKAWORKER_* env < CLI.

pydantic-settings merges the sources; this module adds where the YAML file comes from, the
per-handler overrides, and errors that fit on one line.
"""

from __future__ import annotations

import difflib
import os
import re
import ssl
import time
import types
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from kafkaworker.errors import ConfigError
from kafkaworker.settings_sources import Sources, env_path, is_secret_key

ClientValue = str | int | float | bool

# librdkafka properties the runtime owns: changing them would break at-least-once.
RESERVED_CONSUMER_PROPERTIES = {
    "enable.auto.offset.store": "offsets are stored only once a message is finished",
    "enable.auto.commit": "the runtime commits finished offsets periodically and on revoke",
    "group.id": "set the group with @app.handler(group=...) or handlers.<name>.group",
    "on_commit": "the runtime installs its own commit callback",
    "group.instance.id": "set kafka.group_instance_id: each handler's consumer (and each "
    "process under --processes) gets its own name from it",
}


# ... and those of the share consumers of queue-mode handlers (KIP-932).
RESERVED_SHARE_CONSUMER_PROPERTIES = {
    "share.acknowledgement.mode": "queue mode acknowledges each record explicitly once its "
    "handler is done; implicit mode would accept records that were never handled",
    "enable.auto.commit": "a share consumer commits acknowledgements, not offsets",
    "group.id": "set the share group with @app.handler(group=...) or handlers.<name>.group",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _readable(path: Path | None, what: str, *, secret: bool = False) -> None:
    """A file named by a setting must be readable now, not at the first connection, where
    librdkafka's error would come late and name no setting. A secret's file is not named in
    the error: a secret put where its path belongs must not be printed."""
    if path is None:
        return
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        shown = "" if secret else f" {str(path)!r}"
        raise ValueError(f"{what}{shown} cannot be read ({exc.strerror})") from None


def _readable_ca(path: Path | None) -> None:
    """ca_location may also be a directory of CA certificates, or librdkafka's "probe"."""
    if path is None or str(path) == "probe":
        return
    if path.is_dir():
        if not os.access(path, os.R_OK | os.X_OK):
            raise ValueError(f"ca_location {str(path)!r} cannot be read (permission denied)")
        return
    _readable(path, "ca_location")


def _not_expired(path: Path | None) -> None:
    """A client certificate past its notAfter can never connect (the broker's TLS alert would
    only say "bad certificate"): say so at load. The stdlib has no public PEM certificate
    parser; ssl's test decoder is used, and a certificate it cannot read is left to the TLS
    handshake to judge."""
    if path is None:
        return
    try:
        not_after = ssl.cert_time_to_seconds(ssl._ssl._test_decode_cert(str(path))["notAfter"])  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - not a PEM certificate we can read: librdkafka decides
        return
    if not_after < time.time():
        expired = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(not_after))
        raise ValueError(f"certificate_location {str(path)!r} expired on {expired}: renew it")


def _secret_from(value: SecretStr | None, path: Path | None) -> str | None:
    if path is not None:
        # A mounted secret (Kubernetes) ends with a newline more often than not.
        return path.read_text().rstrip("\r\n")
    return value.get_secret_value() if value is not None else None


_OIDC_FIELDS = (
    "client_id",
    "client_secret",
    "client_secret_file",
    "token_endpoint_url",
    "scope",
    "extensions",
)


class OAuthBearerSettings(_Strict):
    """SASL/OAUTHBEARER tokens, one of two ways:

    - method "oidc": librdkafka's built-in OIDC client-credentials flow; it fetches and
      refreshes the token itself (Confluent Cloud, Keycloak, Entra ID...).
    - method "callback": `token_provider`, "module:function", is called with librdkafka's
      sasl.oauthbearer.config string and returns (token, expiry in epoch seconds): for
      providers with their own signing, such as MSK IAM (aws-msk-iam-sasl-signer-python).
    """

    method: Literal["oidc", "callback"] = "oidc"
    client_id: str | None = None
    client_secret: SecretStr | None = None
    client_secret_file: Path | None = None
    token_endpoint_url: str | None = None
    scope: str | None = None
    # librdkafka's "key=value,key=value" form (e.g. logicalCluster=lkc-123,identityPoolId=...).
    extensions: str | None = None
    token_provider: str | None = None

    @model_validator(mode="after")
    def _check(self) -> OAuthBearerSettings:
        if self.method == "callback":
            if not self.token_provider or ":" not in self.token_provider:
                raise ValueError('method callback needs token_provider: "module:function"')
            unused = [name for name in _OIDC_FIELDS if getattr(self, name) is not None]
            if unused:
                raise ValueError(
                    f"method callback does not use {', '.join(unused)} (the token provider "
                    "makes the token): remove them, or use method oidc"
                )
            return self
        if self.token_provider is not None:
            raise ValueError("token_provider is for method callback, not oidc")
        if not self.client_id or not self.token_endpoint_url:
            raise ValueError("method oidc needs client_id and token_endpoint_url")
        if (self.client_secret is None) == (self.client_secret_file is None):
            raise ValueError("set one of client_secret and client_secret_file")
        _readable(self.client_secret_file, "client_secret_file", secret=True)
        return self

    def secret(self) -> str | None:
        return _secret_from(self.client_secret, self.client_secret_file)


class SaslSettings(_Strict):
    mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"]
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None  # a mounted secret, read when a client is created
    oauthbearer: OAuthBearerSettings | None = None

    @model_validator(mode="after")
    def _check(self) -> SaslSettings:
        if self.mechanism == "OAUTHBEARER":
            if self.oauthbearer is None:
                raise ValueError(
                    "mechanism OAUTHBEARER needs sasl.oauthbearer (client_id, client_secret, "
                    "token_endpoint_url)"
                )
            if self.username or self.password or self.password_file:
                raise ValueError("OAUTHBEARER takes no username or password: remove them")
            return self
        if self.oauthbearer is not None:
            raise ValueError(f"sasl.oauthbearer is for mechanism OAUTHBEARER, not {self.mechanism}")
        if not self.username:
            raise ValueError(f"mechanism {self.mechanism} needs sasl.username")
        if (self.password is None) == (self.password_file is None):
            raise ValueError(f"mechanism {self.mechanism} needs one of password and password_file")
        _readable(self.password_file, "password_file", secret=True)
        return self

    def secret(self) -> str | None:
        return _secret_from(self.password, self.password_file)


class SslSettings(_Strict):
    ca_location: Path | None = None  # None: the system's CA certificates
    certificate_location: Path | None = None  # the client certificate, for mTLS
    key_location: Path | None = None
    key_password: SecretStr | None = None
    key_password_file: Path | None = None
    # Check that the broker's certificate names the host connected to (librdkafka's https).
    endpoint_identification: bool = True

    @model_validator(mode="after")
    def _check(self) -> SslSettings:
        if (self.certificate_location is None) != (self.key_location is None):
            raise ValueError("mTLS needs both certificate_location and key_location")
        if self.key_password is not None and self.key_password_file is not None:
            raise ValueError("set one of key_password and key_password_file")
        _readable_ca(self.ca_location)
        _readable(self.certificate_location, "certificate_location")
        _not_expired(self.certificate_location)
        _readable(self.key_location, "key_location")
        _readable(self.key_password_file, "key_password_file", secret=True)
        return self

    @property
    def configured(self) -> bool:
        return (
            any(
                value is not None
                for value in (
                    self.ca_location,
                    self.certificate_location,
                    self.key_location,
                    self.key_password,
                    self.key_password_file,
                )
            )
            or not self.endpoint_identification
        )

    def key_secret(self) -> str | None:
        return _secret_from(self.key_password, self.key_password_file)


class SecuritySettings(_Strict):
    protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl: SaslSettings | None = None
    ssl: SslSettings = Field(default_factory=SslSettings)

    @model_validator(mode="after")
    def _check(self) -> SecuritySettings:
        # Declared but never used would be a silent downgrade: refuse it.
        uses_sasl = self.protocol.startswith("SASL_")
        if uses_sasl and self.sasl is None:
            raise ValueError(f"protocol {self.protocol} needs sasl (mechanism, credentials)")
        if self.sasl is not None and not uses_sasl:
            raise ValueError(
                f"sasl is set but protocol is {self.protocol}: use SASL_SSL (or SASL_PLAINTEXT)"
            )
        if self.ssl.configured and not self.protocol.endswith("SSL"):
            raise ValueError(f"ssl is set but protocol is {self.protocol}: use SSL or SASL_SSL")
        return self


class KafkaSettings(_Strict):
    bootstrap_servers: str = "127.0.0.1:9092"
    # "classic" uses cooperative-sticky assignment; "consumer" is KIP-848's broker-side protocol.
    group_protocol: Literal["classic", "consumer"] = "classic"
    # Static membership (KIP-345): this process's stable name in its consumer groups, e.g. a
    # StatefulSet's pod name. A member restarted under the same name within
    # session.timeout.ms gets its partitions back at once, and the others see no rebalance
    # (under KIP-848 only after a clean stop: a killed member's name is free again when its
    # session ends); but a member that stops for good keeps its partitions idle until that
    # timeout (it does not leave its group). Each handler's consumer is "<name>.<handler>"
    # (and "-<process>" under --processes). Not for queue mode (share groups have no static
    # members). See docs/deployment.md, Restarts and static membership.
    group_instance_id: str | None = Field(default=None, min_length=1, max_length=200)
    security: SecuritySettings = Field(default_factory=SecuritySettings)
    # Raw librdkafka properties, passed through: e.g. {"fetch.min.bytes": 1}. They win over
    # what kafkaworker sets (security included), for anything its settings do not cover.
    consumer: dict[str, ClientValue] = Field(default_factory=dict)
    producer: dict[str, ClientValue] = Field(default_factory=dict)
    # Raw properties of queue-mode handlers' share consumers (KIP-932), on top of the
    # connection part of `consumer` (a share consumer refuses consumer-group properties).
    share_consumer: dict[str, ClientValue] = Field(default_factory=dict)

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # Raw properties may hold secrets too (sasl.password, ssl.key.password...).
        for name, value in super().__repr_args__():
            masked = name in ("consumer", "producer", "share_consumer") and isinstance(value, dict)
            yield name, masked_properties(value) if masked else value


def masked_properties(properties: Mapping[str, Any]) -> dict[str, Any]:
    """Client properties as they may be shown: secret values masked."""
    return {k: "**********" if is_secret_key(k) else v for k, v in properties.items()}


class BackoffSettings(_Strict):
    initial: float | None = None
    multiplier: float | None = None
    max: float | None = None
    jitter: Literal["full", "equal", "none"] | None = None


class DeadLetterSettings(_Strict):
    # Create a handler's DLQ topic at start-up when it does not exist (as Kafka Connect does);
    # with false, a missing DLQ topic fails start-up, naming it.
    create_topics: bool = True
    partitions: PositiveInt | None = None  # None: as many as the handler's largest topic
    replication_factor: PositiveInt | None = None  # None: the broker's default
    timeout: PositiveFloat = 10.0  # how long one DLQ write waits for acks=all


class CircuitBreakerSettings(_Strict):
    """Pause a handler whose messages mostly go to the DLQ (a bad deploy), for `cooldown`."""

    enabled: bool = True
    threshold: float = Field(default=0.5, gt=0, le=1)  # share of the window dead-lettered
    window: PositiveInt = 100  # the last N finished messages
    min_messages: PositiveInt = 20  # no verdict on fewer
    cooldown: PositiveFloat = 30.0  # seconds paused before trying again


class SchemaRegistrySettings(_Strict):
    """For codec="avro": the registry's URL and client properties (basic.auth.user.info...)."""

    url: str
    config: dict[str, ClientValue] = Field(default_factory=dict)

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        for name, value in super().__repr_args__():
            masked = name == "config" and isinstance(value, dict)
            yield name, masked_properties(value) if masked else value


class MetricsSettings(_Strict):
    """The HTTP endpoint: /metrics (Prometheus), /healthz (liveness), /readyz (readiness)."""

    # Off unless set: two workers on one host would otherwise fight over a default port.
    port: int | None = Field(default=None, ge=1, le=65535)
    # All interfaces, so that a scraper or a container probe reaches it.
    host: str = "0.0.0.0"


class DashboardSettings(_Strict):
    """The worker dashboard on the metrics port: GET / (the page), /api/status, /api/failures.

    The page is read-only. Operator actions (pause/resume a partition, open/close a handler's
    circuit breaker) need `control: true` and a `token`, sent by the page in a header."""

    # Served wherever metrics.port is: reading it costs the worker nothing until asked.
    enabled: bool = True
    control: bool = False
    token: SecretStr | None = None

    @model_validator(mode="after")
    def _control_needs_token(self) -> DashboardSettings:
        if self.control and not (self.token and self.token.get_secret_value()):
            raise ValueError(
                "dashboard.control needs dashboard.token (a secret the page sends with every "
                "action): set KAFKAWORKER_DASHBOARD__TOKEN, or turn control off"
            )
        return self


# What Kafka allows in a topic name (kafka.common.internals.Topic): checked at load, so that a
# typo is one line naming the setting, not a failure of the first report.
_TOPIC_NAME = re.compile(r"[a-zA-Z0-9._-]{1,249}")


class FleetSettings(_Strict):
    """The fleet (kafkaworker/fleet/): each worker process reports its status to a compacted
    topic every `interval`, its failures to a bounded topic, and (with `control`) acts on the
    operators' commands from a commands topic; `kafkaworker dashboard` reads them all."""

    # Off by default: a worker writes to no topic of kafkaworker's own unless asked.
    enabled: bool = False
    topic: str = "__kafkaworker.reports"  # compacted, keyed by process
    errors_topic: str = "__kafkaworker.errors"
    commands_topic: str = "__kafkaworker.commands"
    audit_topic: str = "__kafkaworker.audit"
    # Seconds between a process's reports; one silent for three of them is shown gone.
    interval: PositiveFloat = 5.0
    # How long the reports topic keeps a report (the last one of a stopped or gone process
    # stays on the page this long); the errors topic keeps failures `errors_retention`, the
    # commands and audit topics `audit_retention` (a fleet pause is remembered this long by
    # processes that start later).
    retention: PositiveFloat = 3600.0
    errors_retention: PositiveFloat = 86_400.0
    audit_retention: PositiveFloat = 30 * 86_400.0
    replication_factor: PositiveInt | None = None  # of the topics created; None: the broker's
    # Act on commands (pause and resume across the fleet, breakers, quiet, stop). Only those
    # signed with dashboard.token are obeyed: writing to the commands topic is not enough.
    control: bool = False

    @field_validator("topic", "errors_topic", "commands_topic", "audit_topic")
    @classmethod
    def _topic_name(cls, value: str) -> str:
        if not _TOPIC_NAME.fullmatch(value) or value in {".", ".."}:
            raise ValueError(
                "not a Kafka topic name (1-249 characters of a-z, A-Z, 0-9, '.', '_', '-')"
            )
        return value


class AlertSettings(_Strict):
    """Thresholds of the Prometheus alerting rules (`kafkaworker alerts`, and the PrometheusRule
    of `kafkaworker manifests`); durations in seconds. docs/alerts.md says what each alert
    means and where to look."""

    # The handler's lag rose over every 5-minute window for this long.
    lag_growing_for: PositiveFloat = 900.0
    # A partition's oldest unfinished record is older than this, for `time_lag_for`.
    time_lag_seconds: PositiveFloat = 300.0
    time_lag_for: NonNegativeFloat = 120.0
    # Records dead-lettered per minute (averaged over 5 minutes), for `dead_letters_for`.
    dead_letters_per_minute: PositiveFloat = 1.0
    dead_letters_for: NonNegativeFloat = 60.0
    # Messages past their retries (stalled at the maximum backoff) for this long.
    stalled_for: NonNegativeFloat = 300.0
    # A circuit breaker open for this long.
    breaker_open_for: NonNegativeFloat = 300.0
    # A handler's consumer out of its group (starting, rejoining, draining) for this long.
    not_ready_for: NonNegativeFloat = 300.0
    # A partition with records waiting whose committed position did not move for this long.
    commits_stalled_for: PositiveFloat = 600.0


class OutboxSettings(_Strict):
    """The relay of an outbox declared without them (`PostgresOutbox()`, docs/outbox.md);
    what the constructor is given wins."""

    # How often the relay looks for rows written without a notification (seconds).
    poll_interval: PositiveFloat = 1.0
    # How long published rows are kept before the relay deletes them (seconds).
    retention: PositiveFloat = 3600.0
    # Rows per publication round: each round waits for all its acknowledgements.
    batch: PositiveInt = 2000


class PostgresSettings(_Strict):
    """The database of an inbox or outbox declared without a URL (`PostgresInbox()`,
    docs/inbox.md): a postgresql:// URL or a libpq conninfo string, kept secret (it may hold a
    password: shown masked, never logged); and the outbox relay's settings."""

    url: SecretStr | None = None
    outbox: OutboxSettings = Field(default_factory=OutboxSettings)


class TracingSettings(_Strict):
    """OpenTelemetry tracing (docs/tracing.md): a `process {topic}` span per handler call and a
    `send {topic}` span per record written, the W3C `traceparent` carried in the records'
    headers. Needs `pip install 'kafkaworker[otel]'`. The SDK is set up from the standard
    OTEL_* variables (OTEL_SERVICE_NAME, OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_TRACES_SAMPLER...)
    unless the app installed a TracerProvider of its own, which then wins."""

    # Off by default: each traced message costs the SDK's span (docs/tracing.md, Cost).
    enabled: bool = False
    # Links of a batch handler's span, one per message up to this many (the SDK keeps 128
    # by default: OTEL_SPAN_LINK_COUNT_LIMIT).
    batch_links: PositiveInt = 128
    # The messaging metrics through the OpenTelemetry meter as well (Prometheus' stay as they
    # are): messaging.process.duration, messaging.client.operation.duration,
    # messaging.client.sent.messages, messaging.client.consumed.messages. Off by default: a
    # measurement per message is what the SDK charges most for (docs/tracing.md, Cost).
    metrics: bool = False


class BatchSettings(_Strict):
    """A batch handler's batch size and wait (a handler declared without batch= has none)."""

    max_size: PositiveInt | None = None
    max_wait: float | None = Field(default=None, ge=0)


class HandlerSettings(_Strict):
    """Per-handler overrides of the decorator's arguments (None: keep the decorator's):
    one codebase runs against prod.orders and staging.orders."""

    # A list, or one name (a comma-separated list from an environment variable).
    topics: tuple[str, ...] | None = None
    group: str | None = None
    concurrency: PositiveInt | None = None
    ordering: Literal["partition", "key", "none"] | None = None
    mode: Literal["stream", "queue"] | None = None
    retries: int | None = Field(default=None, ge=0)
    backoff: BackoffSettings | None = None
    dlq: str | None = None
    codec: str | None = None
    ack: Literal["auto", "manual"] | None = None
    on_exhausted: Literal["stall", "skip"] | None = None
    retry_topics: tuple[PositiveFloat, ...] | None = None
    output: str | None = None
    batch: BatchSettings | None = None
    circuit_breaker: CircuitBreakerSettings | None = None
    trace_parent: Literal["parent", "link"] | None = None
    processing_guarantee: Literal["at_least_once", "exactly_once"] | None = None

    @field_validator("topics", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="KAFKAWORKER_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    handlers: dict[str, HandlerSettings] = Field(default_factory=dict)
    dead_letter: DeadLetterSettings = Field(default_factory=DeadLetterSettings)
    schema_registry: SchemaRegistrySettings | None = None
    circuit_breaker: CircuitBreakerSettings = Field(default_factory=CircuitBreakerSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    dashboard: DashboardSettings = Field(default_factory=DashboardSettings)
    fleet: FleetSettings = Field(default_factory=FleetSettings)
    alerts: AlertSettings = Field(default_factory=AlertSettings)
    tracing: TracingSettings = Field(default_factory=TracingSettings)
    postgres: PostgresSettings = Field(default_factory=PostgresSettings)

    # How long graceful shutdown waits for in-flight messages before it commits and exits.
    shutdown_timeout: PositiveFloat = 30.0
    # How long a revoke waits for the revoked partitions' in-flight messages.
    revoke_timeout: PositiveFloat = 30.0
    # How long a consumer may be out of its group (not joined, or stuck joining) before the
    # runtime closes it and starts a fresh one. librdkafka 2.16 sometimes never rejoins after
    # a session timeout (a hung broker, an overloaded machine): its join requests stay unsent
    # in the coordinator connection's out-queue (cf. librdkafka#3082; found by the hung-broker
    # and rebalance-storm fault tests). Longer than revoke_timeout: a member may legitimately
    # wait that long for another member's revoke.
    join_timeout: PositiveFloat = 60.0
    # How long start-up waits for the brokers to answer before it gives up.
    startup_timeout: PositiveFloat = 15.0
    # Backpressure: messages fetched and not yet committable, per handler and per partition.
    # Above a limit the partitions are paused (and still polled, so membership is kept).
    # librdkafka drops a paused partition's prefetched records (librdkafka#5343), so every
    # pause costs a refetch: the limits are sized so that a fast handler never trips them
    # (a per-partition 2_000 halved the decode-only throughput; see docs/architecture.md).
    # They count records, not bytes: 20_000 records of 1 KB are 20 MB; lower them for large
    # records.
    max_pending: PositiveInt = 20_000
    max_pending_per_partition: PositiveInt = 5_000
    # Largest batch taken from the consumer at once (never more than max_pending has room
    # for). Each poll turn costs a round trip for the GIL and a wake-up of the pool: S1 went
    # 533k -> 586k records/s from 500 to 4000 (the raw loop gained nothing from 1000 -> 4000).
    poll_batch: PositiveInt = 4000
    # Once started, freeze what start-up built (never garbage, so full collections stop
    # walking it) and run the young collection every 10,000 allocations instead of 700: the
    # collector cost a decode-only handler a fifth of its time (see docs/architecture.md).
    # Off: Python's defaults are left alone (the worker shares its process with other code).
    tune_gc: bool = True
    # How long a handler's outputs may take to be acknowledged before the handler fails.
    produce_timeout: PositiveFloat = 30.0
    # The event loop of async def handlers: asyncio's own, or uvloop's (pip install uvloop).
    # asyncio is the default: with the poll thread beside it, uvloop handled fewer messages
    # here (see docs/architecture.md), though it runs bare sleeps faster.
    event_loop: Literal["asyncio", "uvloop"] = "asyncio"
    # How often finished offsets are committed, at most (a commit goes at once when the last
    # one is older): a crash repeats what finished since the last commit, besides the
    # messages in flight. Each commit is a request to the group coordinator and a record in
    # __consumer_offsets (docs/architecture.md, Commits: duplicates against commits/s).
    commit_interval: PositiveFloat = 0.1
    # The brokers' offset.metadata.max.bytes (Kafka's default): the offset map of what is
    # finished above a committed position (out-of-order completion) travels in the commit's
    # metadata when it fits, so that a crash or a rebalance repeats only unfinished work;
    # a map that does not fit is left out (the plain position, counted). 0: no maps.
    # at_least_once handlers only: exactly_once transactions commit the plain position.
    offset_metadata_max_bytes: NonNegativeInt = 4096
    # The processing guarantee of handlers that declare none (None: at_least_once);
    # handlers.<name>.processing_guarantee overrides it for one handler.
    processing_guarantee: Literal["at_least_once", "exactly_once"] | None = None
    # exactly_once handlers commit a transaction this often (Kafka Streams' commit.interval.ms
    # under exactly_once_v2 is 100 ms too): outputs become visible to read_committed readers
    # up to this much later, and each transaction costs two round trips to the coordinator.
    transaction_interval: PositiveFloat = 0.1
    # This worker's stable identity in its groups, the end of its exactly_once handlers'
    # transactional.id with the process index (default: the host name). Stable across
    # restarts, so a restarted member fences its predecessor's open transaction at once
    # (init_transactions) instead of readers waiting for transaction.timeout.ms; unique per
    # running process, or two processes fence each other.
    member: str | None = None
    # Where a group with no committed offset starts. "earliest": a new worker processes what
    # is already there instead of silently skipping it.
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["console", "json"] = "console"

    @model_validator(mode="after")
    def _check_timeouts(self) -> Settings:
        if self.join_timeout <= self.revoke_timeout:
            raise ValueError(
                f"join_timeout ({self.join_timeout:g} s) must be longer than revoke_timeout "
                f"({self.revoke_timeout:g} s), which a member may wait for another member's "
                "revoke before it is joined: raise join_timeout"
            )
        return self

    @model_validator(mode="after")
    def _fleet_control_needs_token(self) -> Settings:
        token = self.dashboard.token
        if self.fleet.control and not (token and token.get_secret_value()):
            raise ValueError(
                "fleet.control needs dashboard.token (a worker obeys only commands signed "
                "with it): set KAFKAWORKER_DASHBOARD__TOKEN, or turn fleet.control off"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # First wins: CLI (init) > environment > YAML file > defaults.
        return (init_settings, env_settings, YamlConfigSettingsSource(settings_cls))


def resolve_settings_path(path: str | os.PathLike[str] | None) -> Path | None:
    """--settings PATH, else KAFKAWORKER_SETTINGS, else ./settings.yaml when it exists."""
    explicit = path if path is not None else os.environ.get("KAFKAWORKER_SETTINGS")
    if explicit:
        resolved = Path(explicit)
        if not resolved.is_file():
            raise ConfigError(f"settings file {str(resolved)!r} does not exist: fix the path")
        return resolved
    default = Path("settings.yaml")
    return default if default.is_file() else None


def load_settings(path: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Load settings from the YAML file, the environment and `overrides` (CLI flags). Every
    problem is told at once, each naming where it came from (ConfigError)."""
    yaml_path = resolve_settings_path(path)
    problems = environment_problems()

    class _FromFile(Settings):
        model_config = SettingsConfigDict(yaml_file=yaml_path)

    try:
        settings = _FromFile(**overrides)
    except ValidationError as exc:
        sources = Sources.read(yaml_path, overrides)
        raise ConfigError(_told(problems + _problems(exc, sources))) from None
    except (OSError, ValueError, yaml.YAMLError) as exc:  # unreadable or malformed YAML
        detail = " ".join(str(exc).split())
        problems.append(f"cannot read settings file {str(yaml_path)!r}: {detail}")
        raise ConfigError(_told(problems)) from None
    problems += client_property_problems(settings)
    if problems:
        raise ConfigError(_told(problems))
    return settings


def settings_for_run(
    app_settings: Settings | None,
    path: str | os.PathLike[str] | None,
    overrides: Mapping[str, Any],
) -> Settings:
    """The settings of one run: the app's own (App(settings=...)) unless a file is named,
    with the CLI's overrides merged key by key; else file + environment + overrides."""
    if app_settings is None or path is not None:
        return load_settings(path, **overrides)
    problems = environment_problems()
    settings = app_settings
    if overrides:
        try:
            settings = Settings.model_validate(_merged(app_settings.model_dump(), overrides))
        except ValidationError as exc:
            sources = Sources(
                overrides=overrides, app_values=app_settings.model_dump(exclude_unset=True)
            )
            raise ConfigError(_told(problems + _problems(exc, sources))) from None
        problems += client_property_problems(settings)
    if problems:
        raise ConfigError(_told(problems))
    return settings


def _told(problems: list[str]) -> str:
    """One problem: its line. More: a line saying how many, then one line each."""
    if len(problems) == 1:
        return problems[0]
    return f"{len(problems)} problems in the settings:\n" + "\n".join(f"  {p}" for p in problems)


def _merged(base: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in changes.items():
        below = merged.get(key)
        if isinstance(value, Mapping) and isinstance(below, Mapping):
            merged[key] = _merged(below, value)
        else:
            merged[key] = value
    return merged


# librdkafka properties kafka.security sets: a raw one beside it would override it for some
# clients only (the consumers, or the producer): mixed credentials, or a silent downgrade.
SECURITY_PROPERTIES = ("security.protocol", "sasl.", "ssl.")


def check_client_properties(settings: Settings) -> None:
    problems = client_property_problems(settings)
    if problems:
        raise ConfigError(_told(problems))


def client_property_problems(settings: Settings) -> list[str]:
    """Raw client properties that kafkaworker manages, or that fight kafka.security."""
    problems = [
        f"setting kafka.consumer.{key} is managed by kafkaworker ({why}): remove it"
        for key, why in RESERVED_CONSUMER_PROPERTIES.items()
        if key in settings.kafka.consumer
    ]
    problems += [
        f"setting kafka.share_consumer.{key} is managed by kafkaworker ({why}): remove it"
        for key, why in RESERVED_SHARE_CONSUMER_PROPERTIES.items()
        if key in settings.kafka.share_consumer
    ]
    security = settings.kafka.security
    if security.protocol == "PLAINTEXT" and security.sasl is None:
        return problems  # security through raw properties only: they are all there is
    for client in ("consumer", "producer", "share_consumer"):
        problems += [
            f"setting kafka.{client}.{key} conflicts with kafka.security (which sets the "
            "security properties of every client): remove one of them"
            for key in getattr(settings.kafka, client)
            if key.startswith(SECURITY_PROPERTIES)
        ]
    return problems


# Fields under kafka.security whose invalid values may be shown: no secret goes there (a
# section given a scalar, or a secret's file given the secret, is not shown).
_SHOWN_SECURITY_FIELDS = frozenset(
    {"protocol", "mechanism", "username", "method", "endpoint_identification", "client_id"}
)


def _problems(exc: ValidationError, sources: Sources) -> list[str]:
    """One line per error pydantic found, each naming the place that set the value. A
    variable that matches no setting is told by environment_problems() already."""
    unknown = {name for name in sources.environ if _unknown_variable(name)}
    return [
        _problem(error, sources)
        for error in exc.errors()
        if sources.variable([str(part) for part in error["loc"]]) not in unknown
    ]


def _problem(error: Any, sources: Sources) -> str:
    key = ".".join(str(part) for part in error["loc"])
    source = f" ({sources.of(error['loc'])})" if key else ""
    if error["type"] == "extra_forbidden":
        allowed = _allowed_keys(error["loc"])
        close = difflib.get_close_matches(str(error["loc"][-1]), allowed, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}? " if close else ""
        listed = "allowed keys are " + ", ".join(allowed) if allowed else "not a known key"
        return f"unknown setting {key!r}{source}: {hint}{listed}"
    value = error.get("input")
    message = str(error["msg"]).removeprefix("Value error, ")
    sensitive = is_secret_key(key) or (
        key.startswith(("kafka.security", "schema_registry.config"))
        and str(error["loc"][-1]) not in _SHOWN_SECURITY_FIELDS
    )
    if not key:
        return f"settings are invalid: {message}"  # a check across settings
    if isinstance(value, Mapping | list) or sensitive:
        # A model's own check (its input: the whole section, secrets included), or a secret.
        return f"setting {key} is invalid{source}: {message}"
    return f"setting {key}={value!r} is invalid{source}: {message}"


def _allowed_keys(loc: tuple[int | str, ...]) -> list[str]:
    """The keys allowed where the last part of `loc` was found."""
    model: type[BaseModel] = Settings
    parts = [str(part) for part in loc[:-1]]
    at = 0
    while at < len(parts):
        field = model.model_fields.get(parts[at])
        if field is None:
            return []
        nested = _model_of(field.annotation)
        if nested is None:  # a dict of models (handlers): the next part is its key
            values = _dict_values(field.annotation)
            nested = _model_of(values) if values is not None else None
            if nested is None:
                return []
            at += 1
        model = nested
        at += 1
    return list(model.model_fields)


def check_environment(environ: Mapping[str, str] | None = None) -> None:
    """Refuse a KAFKAWORKER_* variable that sets nothing: pydantic-settings ignores it, so a
    typo (KAFKAWORKER_SHUTDOWN_TIMOUT) would silently leave the default in force."""
    problems = environment_problems(environ)
    if problems:
        raise ConfigError(_told(problems))


def environment_problems(environ: Mapping[str, str] | None = None) -> list[str]:
    """One line per KAFKAWORKER_* variable that matches no setting."""
    environ = os.environ if environ is None else environ
    problems = []
    for name in sorted(environ):
        parts = env_path(name)
        if parts is None or not _unknown_variable(name):
            continue
        paths = _setting_paths(Settings, parts)
        known = ["KAFKAWORKER_" + "__".join(path).upper() for path in paths]
        close = difflib.get_close_matches(name.upper(), known, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}?" if close else "see docs/settings.md for every setting"
        problems.append(
            f"environment variable {name} matches no setting: {hint} (fix the name or unset it)"
        )
    return problems


def _unknown_variable(name: str) -> bool:
    parts = env_path(name)
    return parts is not None and not _is_setting(Settings, parts)


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The settings model inside `annotation` (X, X | None), if any."""
    candidates = typing.get_args(annotation) if _is_union(annotation) else (annotation,)
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _dict_values(annotation: Any) -> Any:
    """For dict[str, V]: V; else None."""
    if typing.get_origin(annotation) is dict:
        return typing.get_args(annotation)[1]
    return None


def _is_setting(model: type[BaseModel], parts: list[str]) -> bool:
    field = model.model_fields.get(parts[0])
    if field is None:
        return False
    rest = parts[1:]
    if not rest:
        return True
    nested = _model_of(field.annotation)
    if nested is not None:
        return _is_setting(nested, rest)
    values = _dict_values(field.annotation)
    if values is None:
        return False
    values_model = _model_of(values)
    if values_model is None:
        return True  # a raw client property: any name
    return len(rest) == 1 or _is_setting(values_model, rest[1:])


def _setting_paths(model: type[BaseModel], hint: list[str]) -> Iterator[list[str]]:
    """Every setting's path under `model`; a dict of models (handlers) is expanded under the
    name `hint` gives it, so KAFKAWORKER_HANDLERS__MINE__RETRYS suggests ..._RETRIES."""
    for name, field in model.model_fields.items():
        yield [name]
        nested = _model_of(field.annotation)
        values = _dict_values(field.annotation)
        if nested is not None:
            for path in _setting_paths(nested, hint[1:]):
                yield [name, *path]
        elif values is not None and _model_of(values) is not None and len(hint) > 1:
            for path in _setting_paths(_model_of(values), hint[2:]):  # type: ignore[arg-type]
                yield [name, hint[1], *path]

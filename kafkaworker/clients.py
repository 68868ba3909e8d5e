"""What every Kafka client the process creates shares: where the brokers are, where librdkafka
logs, and how a client's failure to reach them is told (one line, the same everywhere).

Handlers' consumers (runtime/source/consumer_group.py), the producer (producer.py), admin
clients (ops/, the runner's preflight) and the tools' consumers (ops/dlq.py) all start from
base_config(); raw `kafka.consumer` / `kafka.producer` properties are applied on top by each.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import Any, TypeVar

from confluent_kafka import KafkaError, KafkaException

from kafkaworker.errors import ConfigError, StartupError
from kafkaworker.observability.logging import LIBRDKAFKA_LOGGER
from kafkaworker.settings import SecuritySettings, Settings

T = TypeVar("T")

METADATA_REFRESH_MS = 10_000

# Short-lived clients whose failure to connect is reported in one line by the caller: their
# own log lines ("Connect to ... failed", again and again) would only bury it.
_QUIET = logging.getLogger(LIBRDKAFKA_LOGGER + ".quiet")
_QUIET.setLevel(logging.CRITICAL)
_QUIET.propagate = False

# Consumer-only librdkafka properties an AdminClient would warn about; connection settings
# (and security ones) must reach it.
_CONSUMER_ONLY_PREFIXES = (
    "fetch.",
    "group.",
    "auto.",
    "enable.auto",
    "max.poll",
    "session.",
    "heartbeat.",
    "partition.assignment",
    "isolation.",
    "queued.",
    "enable.partition.eof",
    "check.crcs",
    "consume.",
)


def base_config(settings: Settings, *, quiet: bool = False) -> dict[str, Any]:
    """Connection settings every client gets, security included. `quiet`: librdkafka's logs
    are dropped."""
    return {
        "bootstrap.servers": settings.kafka.bootstrap_servers,
        "logger": _QUIET if quiet else logging.getLogger(LIBRDKAFKA_LOGGER),
        # Partitions added to a topic are seen (consumed, produced to) within this, not
        # librdkafka's 5 minutes: one small metadata request per client every 10 s.
        "topic.metadata.refresh.interval.ms": METADATA_REFRESH_MS,
        **security_config(settings.kafka.security),
    }


def security_config(security: SecuritySettings) -> dict[str, Any]:
    """kafka.security as librdkafka properties (secret files are read now: a rotated mounted
    secret is picked up by the next client created)."""
    config: dict[str, Any] = {"security.protocol": security.protocol}
    sasl = security.sasl
    if sasl is not None:
        config["sasl.mechanism"] = sasl.mechanism
        if sasl.oauthbearer is not None and sasl.oauthbearer.method == "callback":
            assert sasl.oauthbearer.token_provider is not None
            config["oauth_cb"] = token_provider(sasl.oauthbearer.token_provider)
        elif sasl.oauthbearer is not None:
            oauth = sasl.oauthbearer
            config["sasl.oauthbearer.method"] = oauth.method
            config["sasl.oauthbearer.client.id"] = oauth.client_id
            config["sasl.oauthbearer.client.secret"] = oauth.secret()
            config["sasl.oauthbearer.token.endpoint.url"] = oauth.token_endpoint_url
            if oauth.scope is not None:
                config["sasl.oauthbearer.scope"] = oauth.scope
            if oauth.extensions is not None:
                config["sasl.oauthbearer.extensions"] = oauth.extensions
        else:
            config["sasl.username"] = sasl.username
            config["sasl.password"] = sasl.secret()
    if security.protocol.endswith("SSL"):
        ssl = security.ssl
        for key, path in (
            ("ssl.ca.location", ssl.ca_location),
            ("ssl.certificate.location", ssl.certificate_location),
            ("ssl.key.location", ssl.key_location),
        ):
            if path is not None:
                config[key] = str(path)
        key_password = ssl.key_secret()
        if key_password is not None:
            config["ssl.key.password"] = key_password
        config["ssl.endpoint.identification.algorithm"] = (
            "https" if ssl.endpoint_identification else "none"
        )
    return config


class ConnectionWatch:
    """A client's error_cb. An error that no retry will fix (credentials refused, a
    certificate not trusted either way) is the one line to fail with at once, instead of
    waiting out a timeout that would end in "cannot reach Kafka". One that may pass (a TLS
    connection dropped by a restarting broker, an identity provider down for a moment) is
    kept, and told instead of "cannot reach Kafka" if the cluster still has not answered
    when the wait is over. librdkafka serves error_cb from poll(): a waiter calls check()
    between its slices."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._client: Any = None
        self.failure: StartupError | None = None  # permanent
        self.last: StartupError | None = None  # the latest that may pass

    def attach(self, client: Any) -> Any:
        self._client = client
        return client

    def detach(self) -> None:
        """Drop the client: the client holds this object as its error_cb, and the cycle would
        keep it (its threads and connections) alive until a garbage collection."""
        self._client = None

    def __call__(self, error: KafkaError) -> None:
        found = refusal(self._settings, error)
        if found is None:
            return
        line, permanent = found
        if permanent and self.failure is None:
            self.failure = line
        self.last = line

    def check(self) -> None:
        """Raise the permanent failure seen so far, if any."""
        if self.failure is None and self._client is not None:
            with contextlib.suppress(RuntimeError, KafkaException):  # closed meanwhile
                self._client.poll(0)
        if self.failure is not None:
            raise self.failure

    def give_up(self, fallback: StartupError) -> StartupError:
        """The line for a wait that ran out: the cluster's refusal when there was one."""
        return self.failure or self.last or fallback


# A TLS alert or a verification error that names the certificate: no retry changes it.
_CERTIFICATE_WORDS = (
    "certificate verify failed",
    "bad certificate",
    "certificate unknown",
    "unknown ca",
    "certificate expired",
    "certificate required",
    "certificate revoked",
    "unsupported certificate",
)


def refusal(settings: Settings, error: KafkaError) -> tuple[StartupError, bool] | None:
    """The one line for an error that says the cluster refuses this client, and whether it is
    permanent; None for one that says nothing about security (a broker down, a leader
    moving)."""
    security = settings.kafka.security
    sasl = security.sasl
    servers = settings.kafka.bootstrap_servers
    text = " ".join(str(error.str()).split())
    lowered = text.lower()
    code = error.code()
    if code == KafkaError._AUTHENTICATION or "SASL authentication" in text:
        if sasl is not None and sasl.oauthbearer is not None:
            # The token could not be had (the identity provider may be down for a moment), or
            # the broker refused it: retried until startup_timeout either way.
            return StartupError(
                f"OAUTHBEARER authentication failed at {servers} ({security.protocol}): "
                f"{_briefly(text)}: check kafka.security.sasl.oauthbearer"
            ), False
        if sasl is not None:
            return StartupError(
                f"authentication failed at {servers} ({security.protocol}, {sasl.mechanism}, "
                f"user {sasl.username!r}): {_briefly(text)}: check kafka.security.sasl "
                "(username, password or password_file)"
            ), True
        return StartupError(
            f"the cluster at {servers} refused this client ({security.protocol}): "
            f"{_briefly(text)}: check kafka.security"
        ), True
    certificate = any(word in lowered for word in _CERTIFICATE_WORDS)
    if certificate and "alert" in lowered:
        # The broker's TLS alert: it did not accept our certificate (or none was given).
        cert = security.ssl.certificate_location
        return StartupError(
            f"the cluster at {servers} refused this client's TLS certificate "
            f"({security.protocol}, {'certificate ' + repr(str(cert)) if cert else 'none given'}"
            f"): {_briefly(text)}: check kafka.security.ssl.certificate_location and "
            "key_location (a certificate the cluster trusts, not expired)"
        ), True
    if certificate:
        return StartupError(
            f"TLS handshake with {servers} failed ({security.protocol}): {_briefly(text)}: "
            "check kafka.security.ssl.ca_location (the CA that signed the brokers' "
            "certificates) and endpoint_identification"
        ), True
    if code == KafkaError._SSL or "SSL handshake failed" in text:
        # Dropped mid-handshake, say: a broker restarting, or a listener without TLS.
        return StartupError(
            f"TLS handshake with {servers} failed ({security.protocol}): {_briefly(text)}: "
            "check that the listener speaks TLS (kafka.security.protocol) and is up"
        ), False
    if "incorrect security.protocol" in text:
        return StartupError(
            f"the cluster at {servers} did not answer {security.protocol}: {_briefly(text)}: "
            "check kafka.security.protocol"
        ), False
    return None


def _briefly(text: str) -> str:
    """librdkafka's error text without the broker name prefix and the state suffix."""
    _, sep, rest = text.partition("/bootstrap: ")
    text = rest if sep else text
    return text.split(" (after ")[0]


def token_provider(reference: str) -> Callable[[str], Any]:
    """The "module:function" named by sasl.oauthbearer.token_provider."""
    module_name, _, name = reference.partition(":")
    try:
        provider = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            f"setting kafka.security.sasl.oauthbearer.token_provider={reference!r} cannot be "
            f"imported ({type(exc).__name__}: {exc}): fix the module:function"
        ) from None
    if not callable(provider):
        raise ConfigError(f"token_provider {reference!r} is not a function")
    return provider  # type: ignore[no-any-return]


def connection_config(
    settings: Settings, *, quiet: bool = True, watch: ConnectionWatch | None = None
) -> dict[str, Any]:
    """A tool's client (an AdminClient, a consumer that joins no group): the connection
    settings of the consumer's raw properties (security ones among them), none of its
    consuming ones. Quiet by default: its caller reports a failure in one line (the
    `watch`'s, when the cluster refuses the client)."""
    return {
        **base_config(settings, quiet=quiet),
        **({"error_cb": watch} if watch is not None else {}),
        **{
            key: value
            for key, value in settings.kafka.consumer.items()
            if not key.startswith(_CONSUMER_ONLY_PREFIXES)
        },
    }


def unreachable(settings: Settings, timeout: float, error: BaseException) -> StartupError:
    """The one line for a cluster that does not answer (or refuses us)."""
    return StartupError(
        f"cannot reach Kafka at {settings.kafka.bootstrap_servers} within {timeout:g}s "
        f"({reason(error)}): check kafka.bootstrap_servers (env "
        "KAFKAWORKER_KAFKA__BOOTSTRAP_SERVERS), that the brokers are up"
        + (
            " and, for a secured listener, kafka.security.protocol"
            if settings.kafka.security.protocol == "PLAINTEXT"
            else ""
        )
    )


def reason(error: BaseException) -> str:
    """librdkafka's own words for an error, on one line."""
    if isinstance(error, KafkaException) and error.args and isinstance(error.args[0], KafkaError):
        return str(error.args[0].str())
    if isinstance(error, KafkaError):
        return str(error.str())
    return " ".join(str(error).split()) or type(error).__name__


def error_code(error: BaseException) -> int | None:
    if isinstance(error, KafkaException) and error.args and isinstance(error.args[0], KafkaError):
        return int(error.args[0].code())
    return None


# Blocking waits are cut into slices this long: a signal handler runs on the main thread only
# between bytecodes, so one long C call would hold Ctrl+C back until it returned.
SLICE = 0.25


# How long a wait goes before `waiting` is told: a cluster that answers at all answers
# within this (a metadata request on loopback takes milliseconds).
WAITING_AFTER = 1.0


def result(
    future: Future[T],
    timeout: float,
    watch: ConnectionWatch | None = None,
    waiting: Callable[[], None] | None = None,
) -> T:
    """future.result(timeout), in slices that let Ctrl+C through at once (and the `watch`'s
    failure, as soon as it is seen); `waiting()` once when no answer came in WAITING_AFTER."""
    started = time.monotonic()
    deadline = started + timeout
    while True:
        try:
            return future.result(min(SLICE, max(0.0, deadline - time.monotonic())))
        except TimeoutError:
            if watch is not None:
                watch.check()
            now = time.monotonic()
            if waiting is not None and now - started >= WAITING_AFTER:
                waiting()
                waiting = None
            if now >= deadline:
                raise


def in_thread(call: Callable[[], T]) -> Future[T]:
    """Run a blocking client call on a thread of its own, so the caller waits in slices."""
    future: Future[T] = Future()

    def run() -> None:
        try:
            future.set_result(call())
        except BaseException as exc:  # noqa: BLE001 - handed to the waiter
            future.set_exception(exc)

    threading.Thread(target=run, name="kafkaworker-client-call", daemon=True).start()
    return future


def call(
    function: Callable[[], T],
    timeout: float,
    watch: ConnectionWatch | None = None,
    waiting: Callable[[], None] | None = None,
) -> T:
    """function() (a blocking client call bounded by its own timeout, below `timeout`) on a
    thread of its own, waited for in slices."""
    return result(in_thread(function), timeout, watch, waiting)


def metadata(
    client: Any,
    settings: Settings,
    timeout: float | None = None,
    watch: ConnectionWatch | None = None,
    waiting: Callable[[], None] | None = None,
) -> Any:
    """The cluster's metadata from any client (Consumer, Producer, AdminClient); the one
    line of `unreachable` when the cluster does not answer within `timeout` (default:
    startup_timeout), or the `watch`'s when it refuses the client."""
    timeout = settings.startup_timeout if timeout is None else timeout
    try:
        return call(lambda: client.list_topics(timeout=timeout), timeout + 1, watch, waiting)
    except (KafkaException, TimeoutError) as exc:
        if watch is not None:
            raise watch.give_up(unreachable(settings, timeout, exc)) from None
        raise unreachable(settings, timeout, exc) from None


def results(futures: Mapping[Any, Future[T]], timeout: float) -> dict[Any, T]:
    """The results of several futures, within one `timeout` for all of them."""
    deadline = time.monotonic() + timeout
    return {key: result(f, max(0.0, deadline - time.monotonic())) for key, f in futures.items()}

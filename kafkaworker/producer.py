"""Producer: one per process, thread-safe, shared by handlers and the dead-letter path.

confluent-kafka's Producer is thread-safe, but its delivery callbacks only run inside
`poll()`/`flush()`. This class owns a thread that serves them, so `send()` can hand back a
Future resolved on delivery and `send_sync()` can wait for the broker's acknowledgement from
any thread.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, TypedDict

import confluent_kafka
import structlog
from confluent_kafka import KafkaError, KafkaException
from typing_extensions import Unpack

from kafkaworker import clients
from kafkaworker.errors import KafkaWorkerError, StartupError
from kafkaworker.serialization import RUNTIME_CODECS, Codec, get_codec
from kafkaworker.settings import Settings

if TYPE_CHECKING:
    from kafkaworker.tracing.spans import SendSpans

HeaderList = Sequence[tuple[str, bytes | str | None]]


class SendOptions(TypedDict, total=False):
    """What send(), send_sync() and send_async() take beside the topic and value."""

    key: bytes | str | None  # a str is sent UTF-8 encoded
    headers: HeaderList | None
    partition: int | None  # None: the partitioner picks one from the key
    codec: str | Codec | None  # None: bytes (and None) as they are, anything else as JSON
    timeout: float  # seconds; 30 by default


log = structlog.get_logger("kafkaworker.producer")

# A record app.producer keeps for an exactly_once handler's transaction: topic, key, value,
# headers, partition (-1: the partitioner's choice).
HeldSend = tuple[str, bytes | str | None, bytes | None, list[tuple[str, Any]], int]


class TransactionScope:
    """The exactly_once handler a worker thread or event-loop task runs for (set once per
    thread or task by the executors, a context variable). During one of its calls, `sends`
    collects what app.producer is asked to send: those records are held with the call's
    message and produced in the transaction that commits its offset (dropped if the call
    fails), so a crash can never write them twice. Outside a call (a batch handler, a thread
    the handler started does not inherit the context) a send is refused: it would bypass the
    transaction."""

    __slots__ = ("handler", "sends")

    def __init__(self, handler: str) -> None:
        self.handler = handler
        self.sends: list[HeldSend] | None = None

    def send(
        self,
        topic: str,
        payload: bytes | None,
        key: bytes | str | None,
        headers: HeaderList | None,
        partition: int | None,
    ) -> Future[confluent_kafka.Message]:
        """Keep a record for the transaction; a Future resolved at once, to the record
        without its partition and offset (None: known only once the transaction commits)."""
        if self.sends is None:
            raise ProduceError(
                f"app.producer cannot send to {topic!r} here from exactly_once handler "
                f"{self.handler!r} (only during a call of a handler that takes one message, "
                "on its own thread or task): return it as an output= value, or use "
                "at_least_once"
            )
        written = list(headers or ())
        self.sends.append((topic, key, payload, written, -1 if partition is None else partition))
        future: Future[confluent_kafka.Message] = Future()
        future.set_result(
            confluent_kafka.Message(
                topic=topic,
                partition=-1 if partition is None else partition,
                offset=-1,
                key=key.encode() if isinstance(key, str) else key,
                value=payload,
                headers=written,
            )
        )
        return future


TRANSACTION_SCOPE: ContextVar[TransactionScope | None] = ContextVar(
    "kafkaworker_transaction_scope", default=None
)


class ProduceError(KafkaWorkerError):
    """The broker did not acknowledge a record; `kafka_error` says why."""

    def __init__(self, message: str, kafka_error: KafkaError | None = None) -> None:
        super().__init__(message)
        self.kafka_error = kafka_error


class _QueueFullError(ProduceError):
    """librdkafka's local queue stayed full for the send's timeout."""


def producer_config(settings: Settings) -> dict[str, Any]:
    config: dict[str, Any] = {
        **clients.base_config(settings),
        # Durable and ordered by default: a DLQ record or an output must not be lost or
        # duplicated by a producer retry.
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": 5,
        # librdkafka retries a record for up to delivery.timeout.ms (default 300 s). Bound it
        # by send_sync's default wait, so that a send reported failed is not delivered later
        # (after the caller retried it).
        "delivery.timeout.ms": 30_000,
        # Same partition for the same key as the Java client (murmur2), unlike librdkafka's
        # default (consistent_random, CRC32).
        "partitioner": "murmur2_random",
    }
    config.update(settings.kafka.producer)
    return config


class Producer:
    """A thread-safe producer. `send()` returns a Future; `send_sync()` waits for the ack.

    `codec="avro"`, `"json_schema"` or `"protobuf"` by name write through the settings'
    schema_registry (or `schema_registry`, a client of the app's own: App.schema_registry),
    as a handler's codec of that name does."""

    def __init__(
        self, settings: Settings, *, client_id: str | None = None, schema_registry: Any = None
    ) -> None:
        self._settings = settings
        self._schema_registry = schema_registry
        self._named: dict[str, Codec] = {}  # registry codecs by name, built at first use
        self._named_lock = threading.Lock()
        config = producer_config(settings)
        if client_id:
            config.setdefault("client.id", client_id)
        try:
            self._producer = confluent_kafka.Producer(config)
        except (KafkaException, ValueError, TypeError) as exc:
            raise StartupError(f"the producer configuration was rejected: {exc}") from None
        # With tracing on, a `send {topic}` span per record, its context in the record's
        # traceparent header.
        self._spans: SendSpans | None = None
        if settings.tracing.enabled:
            self._spans = _send_spans(
                str(config.get("client.id", "rdkafka")), metrics=settings.tracing.metrics
            )
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="kw-producer", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._closed.is_set():
            try:
                self._producer.poll(0.1)
            except Exception:
                # A delivery callback that raised must not end the deliveries of the rest.
                log.exception("a delivery callback failed")

    def send(
        self, topic: str, value: Any, **options: Unpack[SendOptions]
    ) -> Future[confluent_kafka.Message]:
        """Queue a record; the Future resolves to the delivered record or a ProduceError.

        `value` is encoded by `codec`; without one, bytes (and None, a tombstone) go as they
        are and anything else is JSON. When librdkafka's queue is full, waits up to `timeout`.
        """
        key, headers = options.get("key"), options.get("headers")
        partition, codec = options.get("partition"), options.get("codec")
        timeout = options.get("timeout", 30.0)
        if self._closed.is_set():
            raise ProduceError(f"the producer is closed; cannot send to {topic!r}")
        if isinstance(codec, str) and codec in RUNTIME_CODECS:
            codec = self._registry_codec(codec)
        payload = _encode(topic, value, codec)
        if (scope := TRANSACTION_SCOPE.get()) is not None:
            return scope.send(topic, payload, key, headers, partition)
        future: Future[confluent_kafka.Message] = Future()
        spans = self._spans
        if spans is not None:
            sending, headers = spans.start(topic, key, headers or (), tombstone=payload is None)

        def on_delivery(error: KafkaError | None, record: confluent_kafka.Message) -> None:
            if spans is not None:
                if error is None:
                    spans.delivered(sending, record.partition(), record.offset())  # type: ignore[arg-type]
                else:
                    spans.failed(sending, error.name(), error.str())
            if error is not None:
                log.error("delivery failed", topic=topic, key=key, error=error.str())
            if not future.set_running_or_notify_cancel():
                return  # the waiter gave up on it (cancelled)
            if error is not None:
                future.set_exception(
                    ProduceError(
                        f"record for {topic!r} (key {key!r}) was not delivered: {error.str()}",
                        error,
                    )
                )
            else:
                future.set_result(record)

        kwargs: dict[str, Any] = {
            "key": key,
            "headers": list(headers or ()),
            "on_delivery": on_delivery,
        }
        if partition is not None:
            kwargs["partition"] = partition
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    self._producer.produce(topic, payload, **kwargs)
                    return future
                except BufferError:
                    # The local queue is full: the serving thread is draining it.
                    if time.monotonic() > deadline:
                        raise _QueueFullError(
                            f"librdkafka's queue stayed full for {timeout:g}s sending to {topic!r}"
                        ) from None
                    time.sleep(0.005)
                except KafkaException as exc:
                    raise ProduceError(f"cannot send to {topic!r}: {exc}", exc.args[0]) from None
        except ProduceError as exc:
            if spans is not None:  # never queued: no delivery will end its span
                reason = exc.kafka_error.name() if exc.kafka_error is not None else "_QUEUE_FULL"
                spans.failed(sending, reason, str(exc))
            raise

    def send_sync(
        self, topic: str, value: Any, **options: Unpack[SendOptions]
    ) -> confluent_kafka.Message:
        """Send and wait for the broker's acknowledgement; raise ProduceError on failure."""
        timeout = options.get("timeout", 30.0)
        future = self.send(topic, value, **options)
        try:
            return future.result(timeout)
        except TimeoutError:
            raise ProduceError(
                f"no acknowledgement for a record to {topic!r} within {timeout:g}s"
            ) from None

    async def send_async(
        self, topic: str, value: Any, **options: Unpack[SendOptions]
    ) -> confluent_kafka.Message:
        """Send and await the broker's acknowledgement without blocking the event loop; raise
        ProduceError on failure. For async handlers: `await app.producer.send_async(...)`."""
        timeout = options.get("timeout", 30.0)
        deadline = time.monotonic() + timeout
        while True:
            try:
                now: SendOptions = {**options, "timeout": 0}  # no wait for room in send()
                future = self.send(topic, value, **now)
                break
            except _QueueFullError:
                # send() waited 0 s for room in librdkafka's queue: wait on the loop instead.
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.005)
        try:
            # Shielded: a timeout must not cancel the Future the delivery callback completes.
            return await asyncio.wait_for(
                asyncio.shield(asyncio.wrap_future(future)), max(0.0, deadline - time.monotonic())
            )
        except TimeoutError:
            raise ProduceError(
                f"no acknowledgement for a record to {topic!r} within {timeout:g}s"
            ) from None

    def _registry_codec(self, name: str) -> Codec:
        """The registry codec `name`, from the settings' schema_registry (one client for all
        of this producer's sends, so its schemas are looked up once)."""
        with self._named_lock:
            found = self._named.get(name)
            if found is None:
                registry = self._settings.schema_registry
                if registry is None and self._schema_registry is None:
                    raise ProduceError(
                        f"the {name!r} codec needs a Schema Registry: set schema_registry.url "
                        "in the settings (KAFKAWORKER_SCHEMA_REGISTRY__URL), or pass a codec "
                        "object"
                    )
                # Imported here: the registry's packages are an extra, needed only when used.
                from kafkaworker.serialization.named import runtime_codecs  # noqa: PLC0415

                try:
                    found = runtime_codecs(
                        {"send": name},
                        self._schema_registry,
                        registry.url if registry is not None else None,
                        registry.config if registry is not None else None,
                    )[name]
                except KafkaWorkerError as exc:
                    raise ProduceError(str(exc)) from None
                self._named[name] = found
            return found

    def flush(self, timeout: float = 30.0) -> int:
        """Wait for queued records; returns how many are still undelivered."""
        return int(self._producer.flush(timeout))

    def ping(self, timeout: float = 5.0) -> bool:
        """True when the cluster answers a Metadata request within `timeout`."""
        try:
            self._producer.list_topics(timeout=timeout)
        except KafkaException:
            return False
        return True

    def close(self, timeout: float = 30.0) -> int:
        remaining = self.flush(timeout)
        self._closed.set()
        self._thread.join(1.0)
        return remaining


def _send_spans(client_id: str, *, metrics: bool) -> SendSpans:
    # Imported here: the OpenTelemetry SDK is an extra, needed only with tracing on.
    from kafkaworker.tracing import require  # noqa: PLC0415

    require()
    from kafkaworker.tracing.meters import messaging_meters  # noqa: PLC0415
    from kafkaworker.tracing.spans import SendSpans  # noqa: PLC0415

    return SendSpans(client_id=client_id, meters=messaging_meters() if metrics else None)


def _encode(topic: str, value: Any, codec: str | Codec | None) -> bytes | None:
    if codec is None:
        if value is None or isinstance(value, bytes):
            return value
        codec = "json"
    try:
        resolved = get_codec(codec)
        encode_for = getattr(resolved, "encode_for", None)  # codecs whose subject is the topic
        if encode_for is not None:
            return encode_for(topic, value)  # type: ignore[no-any-return]
        return resolved.encode(value)
    except Exception as exc:
        raise ProduceError(
            f"cannot encode a {type(value).__name__} with the "
            f"{codec if isinstance(codec, str) else codec.name} codec: {exc}"
        ) from exc

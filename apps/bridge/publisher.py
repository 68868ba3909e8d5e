"""Publishing for the RPCs: which topics exist, the producer's send, and what a failure becomes
as a gRPC status. Nothing here owns a client: the Bridge (server.py) does.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import grpc
from confluent_kafka import KafkaError

from apps.bridge.proto import bridge_pb2
from apps.bridge.transactions import MaybeWritten, TransactionalProducer, Written
from kafkaworker import KafkaWorkerError

# Kafka's own rule for topic names (org.apache.kafka.common.internals.Topic).
TOPIC_NAME = re.compile(r"[a-zA-Z0-9._-]{1,249}")


class PublishError(Exception):
    """An RPC's failure: the gRPC status code and a one-line message for the caller."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


_NOT_FOUND = frozenset(
    {KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC, KafkaError._UNKNOWN_PARTITION}
)
# librdkafka refuses a record larger than message.max.bytes itself, as MSG_SIZE_TOO_LARGE.
_TOO_LARGE = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE})
_DENIED = frozenset(
    {KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.CLUSTER_AUTHORIZATION_FAILED}
)


def status_for(error: KafkaError | None) -> grpc.StatusCode:
    """The gRPC status of a record certainly not written. Everything not known to be the
    caller's doing is UNAVAILABLE, which clients treat as retryable: a transaction not
    acknowledged in time, a broker that is down or moving its leaders, a full local queue."""
    code = error.code() if error is not None else None
    if code in _NOT_FOUND:
        return grpc.StatusCode.NOT_FOUND
    if code in _TOO_LARGE:
        return grpc.StatusCode.INVALID_ARGUMENT
    if code in _DENIED:
        return grpc.StatusCode.PERMISSION_DENIED
    return grpc.StatusCode.UNAVAILABLE


class TopicCatalog:
    """Which topics exist, from cluster metadata, so that a record for a missing topic is
    NOT_FOUND at once: with topic auto-creation off (the bridge never creates topics),
    librdkafka would only fail it after topic.metadata.propagation.max.ms (30 s).

    Topics seen are trusted for `ttl` seconds; a name not seen (or seen too long ago) needs
    the list again. One look-up at a time, and every caller that needs it while it runs gets
    its result, success or failure: during an outage six callers used to wait for six
    look-ups in turn (answered at 5, 10 ... 30 s with a 5 s metadata timeout, issue 32). A
    failure is remembered for `failure_ttl`, so callers arriving just after it do not start
    another look-up that would fail the same way.
    """

    def __init__(
        self,
        list_topics: Callable[[], set[str]],
        *,
        ttl: float = 30.0,
        failure_ttl: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._list_topics = list_topics  # blocking, bounded by its own timeout: a thread's
        self._ttl = ttl
        self._failure_ttl = failure_ttl
        self._clock = clock
        self._known: set[str] = set()
        self._listed_at = -float("inf")
        self._failure: tuple[float, KafkaWorkerError] | None = None
        self._lookup: asyncio.Future[set[str]] | None = None

    async def exists(self, topic: str) -> bool:
        """Whether `topic` exists; raises what list_topics raises when the cluster does not
        answer."""
        asked_at = self._clock()
        if topic in self._known and asked_at - self._listed_at < self._ttl:
            return True
        if self._failure is not None and asked_at - self._failure[0] < self._failure_ttl:
            raise self._failure[1]
        if self._lookup is None:
            self._lookup = asyncio.ensure_future(self._look_up())
            # Retrieved here too: when every caller went away, nobody else would.
            self._lookup.add_done_callback(lambda done: done.cancelled() or done.exception())
        # Shielded: a caller that goes away (cancelled RPC) must not end the others' look-up.
        return topic in await asyncio.shield(self._lookup)

    async def _look_up(self) -> set[str]:
        try:
            known = await asyncio.to_thread(self._list_topics)
        except KafkaWorkerError as exc:
            self._failure = (self._clock(), exc)
            raise
        finally:
            self._lookup = None
        self._known, self._listed_at, self._failure = known, self._clock(), None
        return known

    def forget(self, topic: str) -> None:
        """The broker said `topic` is gone: look it up again next time."""
        self._known.discard(topic)


def check_topic(topic: str) -> None:
    if not TOPIC_NAME.fullmatch(topic):
        raise PublishError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"topic: {topic!r} is not a Kafka topic name (1-249 of a-z A-Z 0-9 . _ -)",
        )


async def check_exists(topics: TopicCatalog, topic: str, bootstrap: str) -> None:
    """PublishError unless `topic` is a name Kafka accepts and exists on the cluster."""
    check_topic(topic)
    try:
        exists = await topics.exists(topic)
    except KafkaWorkerError as exc:  # the cluster did not answer the metadata request
        raise PublishError(grpc.StatusCode.UNAVAILABLE, str(exc)) from None
    if not exists:
        raise PublishError(
            grpc.StatusCode.NOT_FOUND, f"topic {topic!r} does not exist on {bootstrap}"
        )


class Publishes(Protocol):
    """What the RPCs publish through: the transactional Publisher, or the OutboxPublisher
    (apps/bridge/outbox.py) with --outbox."""

    async def publish(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None,
        headers: Sequence[tuple[str, bytes | None]],
    ) -> bridge_pb2.PublishReply: ...


class Publisher:
    """Sends a record in a transaction and answers with where the broker wrote it, or raises
    PublishError with a status that says whether it may have been written."""

    def __init__(
        self,
        producer: TransactionalProducer,
        topics: TopicCatalog,
        *,
        timeout: float,
        bootstrap: str,
    ) -> None:
        self._producer = producer
        self._topics = topics
        self._timeout = timeout  # from the record's submission to its answer
        self._bootstrap = bootstrap

    async def publish(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None,
        headers: Sequence[tuple[str, bytes | None]],
    ) -> bridge_pb2.PublishReply:
        await check_exists(self._topics, topic, self._bootstrap)
        record = self._producer.submit(
            topic, value, key=key, headers=headers, deadline=time.monotonic() + self._timeout
        )
        try:
            # Shielded: a caller that cancels leaves its record to be written (at the
            # latest by the flush at shutdown), as a producer would.
            outcome = await asyncio.wait_for(
                asyncio.shield(asyncio.wrap_future(record.answer)), self._timeout
            )
        except TimeoutError:
            outcome = self._producer.give_up(record)
        if isinstance(outcome, Written):
            return bridge_pb2.PublishReply(
                topic=topic,
                partition=outcome.partition,
                offset=outcome.offset,
                timestamp_ms=outcome.timestamp_ms,
            )
        if isinstance(outcome, MaybeWritten):
            raise PublishError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"may have been written to {topic!r}: {outcome.reason}; retry with the same "
                "idempotency key (PlaceOrder: the same order_id)",
            )
        code = status_for(outcome.error)
        if code is grpc.StatusCode.NOT_FOUND:
            self._topics.forget(topic)
        detail = f"not written to {topic!r}: {outcome.reason}"
        if code is grpc.StatusCode.INVALID_ARGUMENT:  # the only one: a record too large
            detail = f"value: {detail}"
        raise PublishError(code, detail)

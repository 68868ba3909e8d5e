"""Publishing for the RPCs: which topics exist, the producer's send, and what a failure becomes
as a gRPC status. Nothing here owns a client: the Bridge (server.py) does.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Sequence

import grpc
from confluent_kafka import KafkaError

from apps.bridge.proto import bridge_pb2
from kafkaworker import KafkaWorkerError, ProduceError, Producer

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


def status_for(error: ProduceError) -> grpc.StatusCode:
    """The gRPC status of a record the broker did not take. Everything not known to be the
    caller's doing is UNAVAILABLE, which clients treat as retryable: a timed-out delivery, a
    broker that is down or moving its leaders, a full local queue."""
    code = error.kafka_error.code() if error.kafka_error is not None else None
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

    Topics seen are trusted for `ttl` seconds; a name not seen refreshes the list, one
    refresh at a time (concurrent callers share it), so a topic created a moment ago is found.
    """

    def __init__(
        self,
        list_topics: Callable[[], set[str]],
        *,
        ttl: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._list_topics = list_topics  # blocking: run in a thread
        self._ttl = ttl
        self._clock = clock
        self._known: set[str] = set()
        self._listed_at = -float("inf")
        self._lock = asyncio.Lock()

    async def exists(self, topic: str) -> bool:
        """Whether `topic` exists; raises what list_topics raises when the cluster does not
        answer."""
        asked_at = self._clock()
        if topic in self._known and asked_at - self._listed_at < self._ttl:
            return True
        async with self._lock:
            if self._listed_at < asked_at:  # nobody refreshed while this call waited
                self._known = await asyncio.to_thread(self._list_topics)
                self._listed_at = self._clock()
        return topic in self._known

    def forget(self, topic: str) -> None:
        """The broker said `topic` is gone: look it up again next time."""
        self._known.discard(topic)


def check_topic(topic: str) -> None:
    if not TOPIC_NAME.fullmatch(topic):
        raise PublishError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"topic: {topic!r} is not a Kafka topic name (1-249 of a-z A-Z 0-9 . _ -)",
        )


class Publisher:
    """Sends a record and answers with where the broker wrote it, or raises PublishError."""

    def __init__(
        self, producer: Producer, topics: TopicCatalog, *, timeout: float, bootstrap: str
    ) -> None:
        self._producer = producer
        self._topics = topics
        # The producer's delivery.timeout.ms is this timeout (server.bridge_settings): the
        # send below waits a little longer, so that librdkafka, which knows whether the
        # record is still queued, is the one that gives up. A record reported UNAVAILABLE
        # is then no longer queued, and is not written later behind the caller's back.
        self._timeout = timeout
        self._bootstrap = bootstrap

    async def publish(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None,
        headers: Sequence[tuple[str, bytes | None]],
    ) -> bridge_pb2.PublishReply:
        check_topic(topic)
        try:
            exists = await self._topics.exists(topic)
        except KafkaWorkerError as exc:  # the cluster did not answer the metadata request
            raise PublishError(grpc.StatusCode.UNAVAILABLE, str(exc)) from None
        if not exists:
            raise PublishError(
                grpc.StatusCode.NOT_FOUND,
                f"topic {topic!r} does not exist on {self._bootstrap}",
            )
        try:
            record = await self._producer.send_async(
                topic, value, key=key, headers=headers, timeout=self._timeout + 2.0
            )
        except ProduceError as exc:
            code = status_for(exc)
            if code is grpc.StatusCode.NOT_FOUND:
                self._topics.forget(topic)
            if code is grpc.StatusCode.INVALID_ARGUMENT:  # the only one: a record too large
                raise PublishError(code, f"value: {exc}") from None
            raise PublishError(code, str(exc)) from None
        partition, offset = record.partition(), record.offset()
        assert partition is not None and offset is not None  # set on every delivered record
        return bridge_pb2.PublishReply(
            topic=topic, partition=partition, offset=offset, timestamp_ms=record.timestamp()[1]
        )

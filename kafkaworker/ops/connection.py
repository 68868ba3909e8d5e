"""One AdminClient and how every request of KafkaAdmin is waited for: at most `timeout` for
the cluster, in slices (so Ctrl+C is felt at once), asked again while the cluster is settling,
and told in one line when it does not answer or refuses the client."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import Any, TypeVar

import structlog
from confluent_kafka import KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from kafkaworker import clients
from kafkaworker.errors import StartupError
from kafkaworker.settings import Settings

T = TypeVar("T")
log = structlog.get_logger("kafkaworker.ops")

EARLIEST = OffsetSpec.earliest()  # type: ignore[no-untyped-call]
LATEST = OffsetSpec.latest()  # type: ignore[no-untyped-call]
_UNREACHABLE = (KafkaError._TRANSPORT, KafkaError._TIMED_OUT, KafkaError._ALL_BROKERS_DOWN)


class AdminConnection:
    """An AdminClient, its ConnectionWatch, and the deadline of the request under way."""

    def __init__(self, settings: Settings, timeout: float) -> None:
        self.settings = settings
        self.timeout = timeout
        self._deadline = 0.0
        try:
            self.watch = clients.ConnectionWatch(settings)
            self.client = self.watch.attach(
                AdminClient(clients.connection_config(settings, watch=self.watch))
            )
        except (KafkaException, ValueError, TypeError) as exc:
            raise StartupError(
                f"the admin client configuration was rejected: {clients.reason(exc)}"
            ) from None

    def close(self) -> None:
        """Let the client go now: the watch (its error_cb) held it in a reference cycle, alive
        with its threads and connections until a garbage collection."""
        self.watch.detach()

    def wait(self, request: Callable[[], Future[T]]) -> T:
        """The result of the admin request `request()` makes; see call."""
        return self.call(lambda: clients.result(request(), self.left(), self.watch))

    def result(self, future: Future[T]) -> T:
        """The result of a request already made, within what is left of the deadline."""
        return clients.result(future, self.left(), self.watch)

    def call(self, call: Callable[[], T]) -> T:
        """call(), asked again on a retriable error until `timeout` has passed since the
        first try: a topic created a moment ago has no leader yet (NOT_LEADER_FOR_PARTITION),
        a new cluster's group coordinator is still loading (NOT_COORDINATOR)."""
        self._deadline = time.monotonic() + self.timeout
        while True:
            try:
                return call()
            except TimeoutError:
                raise self.watch.give_up(
                    clients.unreachable(self.settings, self.timeout, TimeoutError("no answer"))
                ) from None
            except KafkaException as exc:
                code = clients.error_code(exc)
                if code in _UNREACHABLE:
                    raise self.watch.give_up(
                        clients.unreachable(self.settings, self.timeout, exc)
                    ) from None
                if not _retriable(exc) or self.left() <= 0:
                    raise
            time.sleep(0.1)

    def left(self) -> float:
        return max(0.0, self._deadline - time.monotonic())

    def metadata(self, *, tell_waiting: bool = False) -> Any:
        """The cluster's metadata (confluent_kafka ClusterMetadata): brokers, topics.
        `tell_waiting`: when the cluster has not answered within a second, say once what
        is awaited and for how long (a start-up would otherwise be silent for as long as
        startup_timeout)."""
        waiting = self._tell_waiting if tell_waiting else None
        return clients.metadata(self.client, self.settings, self.timeout, self.watch, waiting)

    def _tell_waiting(self) -> None:
        log.info(
            "waiting for Kafka to answer",
            bootstrap=self.settings.kafka.bootstrap_servers,
            gives_up_after=f"{self.timeout:g}s (startup_timeout)",
        )

    def partition_ids(self, topic: str) -> list[int]:
        found = self.metadata().topics.get(topic)
        if found is None or found.error is not None:
            raise self.missing(topic)
        return sorted(found.partitions)

    def missing(self, topic: str) -> StartupError:
        return StartupError(
            f"topic {topic!r} does not exist on {self.settings.kafka.bootstrap_servers}: "
            "check its name (kafkaworker topics list)"
        )

    def offsets(self, topic: str, partitions: Iterable[int], spec: OffsetSpec) -> dict[int, int]:
        """Per partition, the offset `spec` names (EARLIEST, LATEST, or for a timestamp)."""
        request = {TopicPartition(topic, p): spec for p in partitions}
        if not request:
            return {}
        found = self.call(lambda: clients.results(self.client.list_offsets(request), self.left()))
        return {tp.partition: info.offset for tp, info in found.items()}


def exists(metadata: Any, topic: str) -> bool:
    found = metadata.topics.get(topic)
    return found is not None and found.error is None


# Answers of a cluster that is settling (a topic created a moment ago has no leader yet, a new
# cluster's group coordinator is loading): librdkafka does not flag them retriable() when an
# admin request gets them, yet asking again shortly succeeds.
_SETTLING = (
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError.UNKNOWN_LEADER_EPOCH,
    KafkaError.FENCED_LEADER_EPOCH,
    KafkaError.REPLICA_NOT_AVAILABLE,
)


def _retriable(error: KafkaException) -> bool:
    inner = error.args[0] if error.args else None
    return isinstance(inner, KafkaError) and (inner.retriable() or inner.code() in _SETTLING)

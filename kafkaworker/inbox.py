"""What a handler's `inbox=` is to the runtime, without the database driver: the declaration's
value (an `Inbox`, such as kafkaworker.postgres.PostgresInbox) opens, per handler at start-up,
the `InboxCalls` that wrap the handler's calls in a database transaction.

Kept apart from kafkaworker.postgres so that handlers.py and the runtime import no driver: a
worker without the `postgres` extra loads none of it.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

if TYPE_CHECKING:
    from kafkaworker.handlers import HandlerSpec
    from kafkaworker.observability.health import Health
    from kafkaworker.observability.metrics import Metrics
    from kafkaworker.settings import Settings


# Runs a coroutine on the process's event loop and returns its result (EventLoopThread.run):
# an async def handler's inbox opens and closes its pool there.
RunAsync: TypeAlias = Callable[[Coroutine[Any, Any, Any]], Any]


class CommittedOffsets(Protocol):
    """A consumer group's committed offsets, as the inbox's cleanup reads them; its owner (the
    cleanup's thread) closes it."""

    def read(self) -> Mapping[tuple[str, int], int]:
        """(topic, partition) -> the group's committed offset, where it has one."""
        ...

    def close(self) -> None: ...


class InboxCalls(Protocol):
    """One handler's inbox at run time: owns its connection pool and closes it."""

    def wrap(self, call: Callable[[Any, Any], Any]) -> Callable[[Any], Any]:
        """The handler call `call(msg, connection)` as the runtime makes it: in a transaction
        that records the message, or not at all when it was recorded before. For an async def
        handler, both return awaitables."""
        ...

    def wrap_batch(self, call: Callable[[Any, Any], Any]) -> Callable[[Any], Any]:
        """A batch handler's call `call(messages, connection)` as the runtime makes it: one
        transaction that records every message of the batch; the handler gets only those not
        recorded before, and is not called when none is left. A BatchFailures commits the
        others, without the failed ones' rows."""
        ...

    def start_cleanup(self, committed: CommittedOffsets) -> None:
        """Delete, in the background, the rows below the group's committed offsets (when the
        inbox has a cleanup); takes `committed` over, closing it when the cleanup stops."""
        ...

    def close(self) -> None:
        """Stop the cleanup, then close the pool."""
        ...


class Inbox(Protocol):
    """A handler's `inbox=`: where handled messages are recorded."""

    def open(
        self,
        spec: HandlerSpec,
        *,
        group: str,
        metrics: Metrics,
        run_async: RunAsync | None = None,
        settings: Settings | None = None,
    ) -> InboxCalls:
        """Connect (a pool sized to the handler's concurrency), create the inbox table when
        missing, and return the handler's InboxCalls; raises StartupError in one line.
        `run_async`: how to run on the event loop, for an async def handler. `settings`: the
        run's (postgres.url, for an inbox declared without a URL)."""
        ...


class GroupCommitted:
    """A consumer group's committed offsets for its topics, read from Kafka with a consumer
    of its own that joins no group (it only asks the group coordinator). Made by the
    composition root for `kafkaworker run`; owned by the inbox cleanup's thread, which alone
    uses it and closes it."""

    def __init__(self, settings: Settings, group: str, topics: Sequence[str]) -> None:
        from confluent_kafka import Consumer  # noqa: PLC0415 - a client, made when used

        from kafkaworker.clients import connection_config  # noqa: PLC0415

        self._consumer = Consumer(
            {**connection_config(settings), "group.id": group, "enable.auto.commit": False}
        )
        self._topics = tuple(topics)

    def read(self) -> Mapping[tuple[str, int], int]:
        from confluent_kafka import TopicPartition  # noqa: PLC0415

        partitions = []
        for topic in self._topics:
            described = self._consumer.list_topics(topic, timeout=10).topics.get(topic)
            if described is not None and described.error is None:
                partitions += [TopicPartition(topic, p) for p in described.partitions]
        if not partitions:
            return {}
        return {
            (tp.topic, tp.partition): tp.offset
            for tp in self._consumer.committed(partitions, timeout=10)
            if tp.error is None
        }

    def close(self) -> None:
        self._consumer.close()


class Relay(Protocol):
    """An outbox's relay while it runs (kafkaworker.outbox.OutboxRelay): a thread of its own,
    which stop() ends."""

    def start(self) -> Relay: ...

    def stop(self, timeout: float = ...) -> None: ...

    def health(self) -> Health:
        """Liveness and readiness of a relay run alone (`kafkaworker outbox relay`)."""
        ...


class Outbox(Protocol):
    """What `app.outbox(...)` declares (kafkaworker.postgres.PostgresOutbox)."""

    def relay(
        self, settings: Settings, *, client_id: str = ..., metrics: Metrics | None = ...
    ) -> Relay:
        """The relay, not started; StartupError in one line when it cannot work."""
        ...

"""Sources: where a handler's records come from. The poll thread talks to this narrow protocol,
never to a client directly.

- consumer_group.py: a Kafka consumer group (confluent-kafka's Consumer), the default;
- memory.py: an in-memory log with assignments driven by hand, for tests.

Records are confluent-kafka `Message` objects whatever the source (the memory source builds
them too), so the hot path reads them the same way everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple, Protocol

from confluent_kafka import Message as Record


class Partition(NamedTuple):
    topic: str
    partition: int

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]"


class AssignmentListener(Protocol):
    """Told of assignment changes, on the poll thread, from inside `Source.fetch()`."""

    def on_assign(self, partitions: list[Partition]) -> None: ...

    def on_revoke(self, partitions: list[Partition]) -> None:
        """Partitions leave in good order: finish or give up their work, then commit."""
        ...

    def on_lost(self, partitions: list[Partition]) -> None:
        """Partitions are gone already (another member may own them): commit nothing."""
        ...

    def on_joined(self) -> None:
        """A member of the group now, whether or not it was given partitions."""
        ...


class Source(Protocol):
    """One handler's records. Used from the poll thread only."""

    def subscribe(self, topics: Sequence[str], listener: AssignmentListener) -> None: ...

    def fetch(self, timeout: float, max_records: int) -> list[Record]:
        """Up to `max_records` records, in runs of one partition in offset order, waiting at
        most `timeout` for the first. Never a record of a partition revoked during the call
        that was fetched before the revoke (the next owner starts from the committed
        position). Error records are passed through: `Record.error()`."""
        ...

    def pause(self, partitions: Sequence[Partition]) -> None: ...

    def resume(self, partitions: Sequence[Partition]) -> None: ...

    def store(self, positions: Mapping[Partition, int]) -> None:
        """Positions to commit soon (the client commits stored positions periodically):
        every offset below each is finished."""
        ...

    def commit(self, positions: Mapping[Partition, int]) -> None:
        """Commit positions now, synchronously; raises KafkaException when it fails."""
        ...

    def log_end(self, partition: Partition) -> int | None:
        """The log end offset as last seen (no request); None when unknown."""
        ...

    def position(self, partition: Partition) -> int | None:
        """The offset of the next record the source will fetch; None when unknown."""
        ...

    def silence(self) -> float:
        """Seconds the brokers that serve this source have owed it an answer (0 while they
        answer): how long the cluster has not been answering, for health and metrics."""
        ...

    def close(self) -> None:
        """Leave the group; the listener's `on_revoke` runs for what is still assigned."""
        ...


__all__ = ["AssignmentListener", "Partition", "Record", "Source"]

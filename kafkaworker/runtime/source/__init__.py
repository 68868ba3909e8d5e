"""Sources: where a handler's records come from. The poll thread talks to this narrow protocol,
never to a client directly.

- consumer_group.py: a Kafka consumer group (confluent-kafka's Consumer), the default;
- memory.py: an in-memory log with assignments driven by hand, for tests;
- share_group.py: queue mode's share group (confluent-kafka's ShareConsumer), a ShareSource;
- memory_share.py: an in-memory share group over memory.py's log, for tests.

Records are confluent-kafka `Message` objects whatever the source (the memory source builds
them too), so the hot path reads them the same way everywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple, Protocol

from confluent_kafka import AcknowledgeType, KafkaError
from confluent_kafka import Message as Record

# Commit errors that a rebalance in progress causes (the member's generation or epoch moved):
# the coordinator answered, and the commit is sent again once the rebalance is over.
REBALANCING = frozenset(
    {
        KafkaError.ILLEGAL_GENERATION,
        KafkaError.REBALANCE_IN_PROGRESS,
        KafkaError.UNKNOWN_MEMBER_ID,
        KafkaError.STALE_MEMBER_EPOCH,
    }
)


class Partition(NamedTuple):
    topic: str
    partition: int

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]"


class OffsetAndMetadata(NamedTuple):
    """A committed position (every offset below it is finished) and the commit's metadata:
    kafkaworker's offset map of the offsets finished above it (poll/offset_map.py), or ""."""

    offset: int
    metadata: str = ""


class AssignmentListener(Protocol):
    """Told of assignment changes, on the poll thread, from inside `Source.fetch()`."""

    def on_assign(
        self, partitions: list[Partition], committed: Mapping[Partition, OffsetAndMetadata]
    ) -> None:
        """`committed`: what the group has committed for them, where it was read (fetching
        starts at that offset): the new owner skips what its offset map lists."""
        ...

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
    """One handler's records. Used from the poll thread only.

    Every partition it assigns has a committed position: where the group had none, the source
    commits the position auto.offset.reset gives it at assignment, and starts there. Commits
    are the poll thread's (poll/poller.py, OffsetCommit; exactly_once handlers' go in their
    producer transactions instead): the client commits nothing itself."""

    def subscribe(self, topics: Sequence[str], listener: AssignmentListener) -> None: ...

    def fetch(self, timeout: float, max_records: int) -> list[Record]:
        """Up to `max_records` records, in runs of one partition in offset order, waiting at
        most `timeout` for the first. Never a record of a partition revoked during the call
        that was fetched before the revoke (the next owner starts from the committed
        position). Error records are passed through: `Record.error()`."""
        ...

    def pause(self, partitions: Sequence[Partition]) -> None: ...

    def resume(self, partitions: Sequence[Partition]) -> None: ...

    def commit(
        self, offsets: Mapping[Partition, OffsetAndMetadata], *, asynchronous: bool = False
    ) -> None:
        """Commit positions (every offset below each is finished) with their metadata.
        Synchronously: raises KafkaException when it fails. Asynchronously: returns at once,
        and a partition whose commit failed is told by `failed_commits()`."""
        ...

    def failed_commits(self) -> list[tuple[Partition, int]]:
        """Partitions whose asynchronous commit failed since last asked, with the error code
        (confluent_kafka.KafkaError's): to be committed again with what is finished then."""
        ...

    def acknowledged_commits(self) -> list[tuple[Partition, int]]:
        """Partitions whose commit the group coordinator acknowledged since last asked, with
        the offset committed: the committer holds back new work of a partition whose
        commits go unacknowledged (poll/poller.py, OffsetCommit.unacknowledged)."""
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


class TransactionalSource(Source, Protocol):
    """A source an exactly_once handler's transactions can commit for (KIP-447): the
    group's metadata for send_offsets_to_transaction, and a rewind to the committed
    positions after a transaction was aborted."""

    def group_metadata(self) -> object:
        """The consumer's group metadata now (member, generation): the broker fences a
        transaction whose offsets carry a generation that is not the group's any more."""
        ...

    def committed_positions(
        self, partitions: Sequence[Partition], timeout: float
    ) -> dict[Partition, int]:
        """The group's committed positions of these partitions (a request); raises
        KafkaException when it cannot tell."""
        ...

    def seek(self, positions: Mapping[Partition, int]) -> None:
        """Fetch these assigned partitions from these positions next (records fetched
        before are dropped)."""
        ...


class ShareSource(Protocol):
    """Queue mode: one handler's member of a share group (KIP-932). No assignments, offsets
    or pauses: records are acquired with a lock and acknowledged one by one. Used from the
    poll thread only."""

    def subscribe(self, topics: Sequence[str], on_joined: Callable[[], None]) -> None: ...

    def fetch(self, timeout: float) -> list[Record]:
        """The next records acquired for this member (with their delivery counts), waiting at
        most `timeout`; the acknowledgements made so far travel with it. Every record of the
        previous fetch must be acknowledged first."""
        ...

    def acknowledge(self, topic: str, partition: int, offset: int, kind: AcknowledgeType) -> bool:
        """ACCEPT, RELEASE or REJECT one record (sent with the next fetch or commit); False
        when the source no longer holds it."""
        ...

    def commit(self) -> None:
        """Send the acknowledgements made so far, without waiting."""
        ...

    def commit_sync(self, timeout: float) -> None: ...

    def take_refused(self) -> int:
        """Acknowledgements the broker refused since last asked (locks that ran out)."""
        ...

    def silence(self) -> float: ...

    def close(self) -> None:
        """Send what is acknowledged and leave the group; what is still held goes back."""
        ...


__all__ = [
    "AssignmentListener",
    "OffsetAndMetadata",
    "Partition",
    "Record",
    "ShareSource",
    "Source",
    "TransactionalSource",
]

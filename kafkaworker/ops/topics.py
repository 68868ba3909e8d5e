"""Topics: list, describe (partitions, replicas, log start and end), create."""

from __future__ import annotations

import time
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException, TopicCollection
from confluent_kafka.admin import NewTopic

from kafkaworker import clients
from kafkaworker.errors import StartupError
from kafkaworker.ops.connection import EARLIEST, LATEST, AdminConnection


@dataclass(frozen=True)
class TopicSummary:
    name: str
    partitions: int
    replication_factor: int


@dataclass(frozen=True)
class PartitionInfo:
    partition: int
    leader: int | None
    replicas: list[int]
    isr: list[int]
    log_start: int
    log_end: int


@dataclass(frozen=True)
class TopicDescription:
    name: str
    partitions: list[PartitionInfo]


def list_topics(connection: AdminConnection) -> list[TopicSummary]:
    """The cluster's topics, internal ones (__*) left out, by name."""
    metadata = connection.metadata()
    return sorted(
        (
            TopicSummary(
                name,
                len(topic.partitions),
                max((len(p.replicas) for p in topic.partitions.values()), default=0),
            )
            for name, topic in metadata.topics.items()
            if topic.error is None and not name.startswith("__")
        ),
        key=lambda t: t.name,
    )


def describe(connection: AdminConnection, topic: str) -> TopicDescription:
    try:
        description = connection.wait(
            lambda: connection.client.describe_topics(TopicCollection([topic]))[topic]
        )
    except KafkaException as exc:
        if clients.error_code(exc) == KafkaError.UNKNOWN_TOPIC_OR_PART:
            raise connection.missing(topic) from None
        raise
    ids = [p.id for p in description.partitions]
    starts = connection.offsets(topic, ids, EARLIEST)
    ends = connection.offsets(topic, ids, LATEST)
    return TopicDescription(
        topic,
        [
            PartitionInfo(
                p.id,
                p.leader.id if p.leader is not None else None,
                [n.id for n in p.replicas],
                [n.id for n in p.isr],
                starts[p.id],
                ends[p.id],
            )
            for p in sorted(description.partitions, key=lambda p: p.id)
        ],
    )


def create_topic(
    connection: AdminConnection,
    name: str,
    partitions: int | None,
    replication_factor: int | None,
    config: dict[str, str] | None,
    *,
    validate_only: bool,
    exist_ok: bool,
) -> bool:
    """See KafkaAdmin.create_topic."""
    new = NewTopic(
        name,
        num_partitions=partitions if partitions is not None else -1,
        replication_factor=replication_factor if replication_factor is not None else -1,
        config=dict(config or {}),
    )
    try:
        connection.wait(
            lambda: connection.client.create_topics([new], validate_only=validate_only)[name]
        )
    except KafkaException as exc:
        if clients.error_code(exc) == KafkaError.TOPIC_ALREADY_EXISTS:
            if exist_ok:
                return False
            raise StartupError(f"topic {name!r} exists already") from None
        raise StartupError(
            f"cannot create topic {name!r}: {clients.reason(exc)}; fix --partitions, "
            "--replication-factor or --config"
        ) from None
    if not validate_only:
        _await_leaders(connection, name)
    return True


def _await_leaders(connection: AdminConnection, topic: str) -> None:
    """Until every partition of the new `topic` has a leader: the next request (produce,
    describe, list offsets) would otherwise meet UNKNOWN_TOPIC_OR_PART or
    NOT_LEADER_FOR_PARTITION."""
    deadline = time.monotonic() + connection.timeout
    while time.monotonic() < deadline:
        found = connection.metadata().topics.get(topic)
        if (
            found is not None
            and found.error is None
            and found.partitions
            and all(p.leader >= 0 for p in found.partitions.values())
        ):
            return
        time.sleep(0.05)

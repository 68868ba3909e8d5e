"""Consumer groups: their state, members and committed offsets, the lag (in records and in
time) of each partition, and moving the offsets (by offset or by time: kafkax's SetOffset and
SetOffsetAt)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from confluent_kafka import (
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    ConsumerGroupState,
    ConsumerGroupTopicPartitions,
    TopicPartition,
)
from confluent_kafka.admin import OffsetSpec

from kafkaworker import clients
from kafkaworker.errors import ConfigError, KafkaWorkerError
from kafkaworker.handlers import resolve_specs
from kafkaworker.ops.connection import EARLIEST, LATEST, AdminConnection, exists
from kafkaworker.settings import Settings

if TYPE_CHECKING:
    from kafkaworker.app import App


class OffsetResetRefused(KafkaWorkerError):  # noqa: N818 - what happened
    """The group has active members: its offsets are theirs to commit."""


@dataclass(frozen=True)
class Member:
    member_id: str
    client_id: str
    host: str
    assignment: list[str]  # topic[p]


@dataclass(frozen=True)
class PartitionLag:
    topic: str
    partition: int
    committed: int | None  # None: the group never committed this partition
    log_start: int
    log_end: int
    lag: int  # records not consumed yet
    # How old the first record not consumed yet is, in seconds (None: nothing to consume, or
    # its timestamp could not be read).
    time_lag: float | None


@dataclass(frozen=True)
class GroupOffsets:
    group: str
    state: str  # Stable, Empty, PreparingRebalance, CompletingRebalance, Dead, Unknown
    members: list[Member]
    partitions: list[PartitionLag]

    @property
    def lag(self) -> int:
        return sum(p.lag for p in self.partitions)


@dataclass(frozen=True)
class OffsetChange:
    topic: str
    partition: int
    current: int | None
    target: int


def group_offsets(
    connection: AdminConnection, group: str, topic: str | None = None, *, time_lag: bool = True
) -> GroupOffsets:
    """See KafkaAdmin.group."""
    description = connection.wait(
        lambda: connection.client.describe_consumer_groups([group])[group]
    )
    members = [
        Member(
            m.member_id,
            m.client_id,
            m.host,
            [f"{tp.topic}[{tp.partition}]" for tp in m.assignment.topic_partitions],
        )
        for m in description.members
    ]
    committed = _committed(connection, group, topic)
    # Every partition of each topic: one the group never committed is all lag (counted
    # from the log start), not a row to leave out.
    metadata = connection.metadata()
    for name in {topic} if topic is not None else {t for t, _ in committed}:
        found = metadata.topics.get(name)
        if found is None or found.error is not None:
            if name == topic:
                raise connection.missing(name)
            continue  # deleted since the group committed to it
        for partition in found.partitions:
            committed.setdefault((name, partition), None)
    by_topic: dict[str, list[int]] = {}
    for t, p in committed:
        by_topic.setdefault(t, []).append(p)
    rows: list[PartitionLag] = []
    for t, ids in sorted(by_topic.items()):
        starts = connection.offsets(t, ids, EARLIEST)
        ends = connection.offsets(t, ids, LATEST)
        for p in sorted(ids):
            position = committed[(t, p)]
            base = position if position is not None else starts[p]
            rows.append(
                PartitionLag(t, p, position, starts[p], ends[p], max(0, ends[p] - base), None)
            )
    if time_lag:
        rows = _with_time_lag(connection, rows)
    return GroupOffsets(group, _state_name(description.state), members, rows)


@dataclass(frozen=True)
class ResetTarget:
    """Where a reset moves each partition: exactly one of these."""

    to_earliest: bool = False
    to_latest: bool = False
    to_offset: int | None = None
    to_datetime: datetime | None = None
    shift_by: int | None = None

    def __post_init__(self) -> None:
        chosen = [self.to_earliest, self.to_latest, self.to_offset is not None]
        chosen += [self.to_datetime is not None, self.shift_by is not None]
        if sum(chosen) != 1:
            raise ConfigError(
                "give exactly one of to_earliest, to_latest, to_offset, to_datetime, shift_by"
            )

    def offsets(
        self, connection: AdminConnection, topic: str, ids: list[int]
    ) -> Callable[[int, int | None], int]:
        """target(partition, committed): where `partition` moves, within what the log holds."""
        starts = connection.offsets(topic, ids, EARLIEST)
        ends = connection.offsets(topic, ids, LATEST)
        at: dict[int, int] = {}
        if self.to_datetime is not None:
            when = (
                self.to_datetime
                if self.to_datetime.tzinfo
                else self.to_datetime.replace(tzinfo=UTC)
            )
            at = connection.offsets(
                topic, ids, OffsetSpec.for_timestamp(int(when.timestamp() * 1000))
            )

        def target(p: int, now: int | None) -> int:
            if self.to_earliest:
                found = starts[p]
            elif self.to_latest:
                found = ends[p]
            elif self.to_offset is not None:
                found = self.to_offset
            elif self.to_datetime is not None:
                found = at[p] if at[p] >= 0 else ends[p]  # none that late: the end
            else:
                assert self.shift_by is not None
                found = (now if now is not None else starts[p]) + self.shift_by
            return min(max(found, starts[p]), ends[p])

        return target


def reset_offsets(
    connection: AdminConnection,
    group: str,
    topic: str,
    to: ResetTarget,
    *,
    partitions: Sequence[int] | None,
    execute: bool,
    allow_new_group: bool,
) -> list[OffsetChange]:
    """See KafkaAdmin.reset_offsets."""
    if execute:
        description = connection.wait(
            lambda: connection.client.describe_consumer_groups([group])[group]
        )
        if description.members:
            raise OffsetResetRefused(f"{active_members(group, description.members)}, then reset")
        # A group with no offsets anywhere: a typo of a group's name would otherwise create
        # a new group quietly, and leave the real one as it was.
        if not allow_new_group and not _committed(connection, group, None):
            raise OffsetResetRefused(
                f"group {group!r} has no committed offsets: a new group, or a typo of a "
                "group's name (kafkaworker offsets show GROUP)? To create its offsets, "
                "confirm with --yes (allow_new_group=True)"
            )
    ids = connection.partition_ids(topic)
    if partitions:
        unknown = sorted(set(partitions) - set(ids))
        if unknown:
            raise ConfigError(
                f"topic {topic!r} has partitions 0-{len(ids) - 1}; there is no {unknown[0]}"
            )
        ids = sorted(set(partitions))
    current = _committed(connection, group, topic)
    target = to.offsets(connection, topic, ids)
    changes = [
        OffsetChange(topic, p, current.get((topic, p)), target(p, current.get((topic, p))))
        for p in ids
    ]
    if execute and changes:
        request = ConsumerGroupTopicPartitions(
            group, [TopicPartition(c.topic, c.partition, c.target) for c in changes]
        )
        connection.wait(lambda: connection.client.alter_consumer_group_offsets([request])[group])
    return changes


def active_members(group: str, members: Sequence[Any]) -> str:
    """What stands in the way of moving a group's offsets: its members' next commits."""
    clients_seen = ", ".join(sorted({m.client_id for m in members}))
    return (
        f"group {group!r} has {len(members)} active member(s) ({clients_seen}): "
        "stop its workers first"
    )


def app_lag(connection: AdminConnection, app: App, settings: Settings) -> dict[str, GroupOffsets]:
    """See KafkaAdmin.lag."""
    from kafkaworker.runtime.failures.retrytopics import RetryRoutes  # noqa: PLC0415

    found = {}
    for spec in resolve_specs(app, settings):
        if spec.mode == "queue":
            continue  # a share group: see share_groups() and SHARE_GROUP_NOT_DESCRIBED
        topics = {
            *spec.topics,
            *(s.topic for s in RetryRoutes(spec.topics, spec.retry_topics).stages),
        }
        offsets = group_offsets(connection, spec.group or app.name)
        mine = [p for p in offsets.partitions if p.topic in topics]
        known = {p.topic for p in mine}
        for topic in sorted(topics - known):  # never committed: all of it is lag
            if exists(connection.metadata(), topic):
                mine += group_offsets(connection, spec.group or app.name, topic).partitions
        found[spec.name] = GroupOffsets(offsets.group, offsets.state, offsets.members, mine)
    return found


def _committed(
    connection: AdminConnection, group: str, topic: str | None
) -> dict[tuple[str, int], int | None]:
    partitions = None
    if topic is not None:
        partitions = [TopicPartition(topic, p) for p in connection.partition_ids(topic)]
    request = ConsumerGroupTopicPartitions(group, partitions)
    found = connection.wait(lambda: connection.client.list_consumer_group_offsets([request])[group])
    return {
        (tp.topic, tp.partition): tp.offset if tp.offset >= 0 else None
        for tp in found.topic_partitions
        if tp.error is None and (tp.offset >= 0 or topic is not None)
    }


def _with_time_lag(connection: AdminConnection, rows: list[PartitionLag]) -> list[PartitionLag]:
    """Each lagging partition's time lag: the age of its first record not consumed yet,
    read with a consumer that joins no group and commits nothing."""
    lagging = [r for r in rows if r.lag > 0]
    if not lagging:
        return rows
    stamps = _first_timestamps(
        connection.settings,
        [
            (r.topic, r.partition, r.committed if r.committed is not None else r.log_start)
            for r in lagging
        ],
        timeout=min(connection.timeout, 10.0),
    )
    now = time.time()
    return [
        PartitionLag(
            r.topic,
            r.partition,
            r.committed,
            r.log_start,
            r.log_end,
            r.lag,
            max(0.0, now - stamps[(r.topic, r.partition)])
            if (r.topic, r.partition) in stamps
            else None,
        )
        for r in rows
    ]


def _first_timestamps(
    settings: Settings, positions: Sequence[tuple[str, int, int]], *, timeout: float
) -> dict[tuple[str, int], float]:
    """The timestamp (seconds) of the record at each (topic, partition, offset)."""
    consumer = Consumer(
        {
            **clients.connection_config(settings),
            "group.id": f"kafkaworker-lag-{uuid.uuid4().hex[:8]}",  # never joined: assign()
            "enable.auto.commit": False,
            "enable.partition.eof": False,
        }
    )
    found: dict[tuple[str, int], float] = {}
    try:
        consumer.assign([TopicPartition(t, p, o) for t, p, o in positions])
        deadline = time.monotonic() + timeout
        while len(found) < len(positions) and time.monotonic() < deadline:
            for record in consumer.consume(len(positions), clients.SLICE):
                if record.error() is not None:
                    continue
                where = (record.topic(), record.partition())
                kind, millis = record.timestamp()
                if where not in found and kind != TIMESTAMP_NOT_AVAILABLE:
                    found[where] = millis / 1000  # type: ignore[index]
    finally:
        consumer.close()
    return found


def _state_name(state: Any) -> str:
    names = {
        ConsumerGroupState.STABLE: "Stable",
        ConsumerGroupState.EMPTY: "Empty",
        ConsumerGroupState.DEAD: "Dead",
        ConsumerGroupState.PREPARING_REBALANCING: "PreparingRebalance",
        ConsumerGroupState.COMPLETING_REBALANCING: "CompletingRebalance",
    }
    return names.get(state, "Unknown")


# What `lag` and `offsets show` say of a share group (queue mode): confluent-kafka 2.16's
# AdminClient neither lists nor describes share groups, nor their share-partitions' start
# offsets and in-flight records (Kafka's DescribeShareGroups / DescribeShareGroupOffsets).
SHARE_GROUP_NOT_DESCRIBED = (
    "the Python client's admin API cannot describe share groups yet (no share-partition start "
    "offset, no in-flight records); Kafka's kafka-share-groups.sh --describe --group {group} "
    "--offsets can"
)


def share_groups(app: App, settings: Settings) -> dict[str, str]:
    """Queue-mode handlers of `app` and their share groups."""

    return {
        spec.name: spec.group or app.name
        for spec in resolve_specs(app, settings)
        if spec.mode == "queue"
    }

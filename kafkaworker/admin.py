"""Cluster operations a team running workers needs: topics, group offsets and moving them (by
offset or by time: kafkax's SetOffset and SetOffsetAt), lag, and a preflight check. They are
behind `kafkaworker topics | offsets | lag | check`, and usable from Python:

    from kafkaworker import load_settings
    from kafkaworker.admin import KafkaAdmin

    with KafkaAdmin(load_settings()) as admin:
        admin.create_topic("orders", partitions=8)
        plan = admin.reset_offsets("orders-service", "orders", to_datetime=yesterday)
        admin.reset_offsets("orders-service", "orders", to_datetime=yesterday, execute=True)

Every call waits at most `startup_timeout` for the cluster (in slices, so Ctrl+C is felt at
once) and fails with one line saying what is wrong and what to do.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import partial
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import structlog
from confluent_kafka import (
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    ConsumerGroupState,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    TopicCollection,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic, OffsetSpec

from kafkaworker import clients
from kafkaworker.errors import ConfigError, KafkaWorkerError, StartupError
from kafkaworker.handlers import resolve_specs
from kafkaworker.settings import Settings

if TYPE_CHECKING:
    from kafkaworker.app import App

T = TypeVar("T")
log = structlog.get_logger("kafkaworker.admin")

_UNREACHABLE = (KafkaError._TRANSPORT, KafkaError._TIMED_OUT, KafkaError._ALL_BROKERS_DOWN)
_EARLIEST = OffsetSpec.earliest()  # type: ignore[no-untyped-call]
_LATEST = OffsetSpec.latest()  # type: ignore[no-untyped-call]


class OffsetResetRefused(KafkaWorkerError):  # noqa: N818 - what happened
    """The group has active members: its offsets are theirs to commit."""


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


@dataclass(frozen=True)
class AppTopic:
    """A topic an app consumes or writes."""

    topic: str
    kind: str  # source, retry, dlq, output
    handler: str
    # Created with as many partitions as the largest of these (a retry topic: its source; a
    # DLQ: the handler's topics, unless dead_letter.partitions is set); () for a source or
    # an output: as asked, else the broker's default.
    sized_like: tuple[str, ...] = ()


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


class KafkaAdmin:
    """One AdminClient (and, for time lag, a short-lived consumer) for a run of operations."""

    def __init__(self, settings: Settings, *, timeout: float | None = None) -> None:
        self.settings = settings
        self.timeout = timeout if timeout is not None else settings.startup_timeout
        self._deadline = 0.0
        try:
            self._topic_access: dict[str, frozenset[str] | None] = {}
            self._group_access: dict[str, frozenset[str]] = {}
            self.watch = clients.ConnectionWatch(settings)
            self._admin = self.watch.attach(
                AdminClient(clients.connection_config(settings, watch=self.watch))
            )
        except (KafkaException, ValueError, TypeError) as exc:
            raise StartupError(
                f"the admin client configuration was rejected: {clients.reason(exc)}"
            ) from None

    def __enter__(self) -> KafkaAdmin:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Let the client go now: the watch (its error_cb) held it in a reference cycle, alive
        with its threads and connections until a garbage collection."""
        self.watch.detach()

    # -- topics -------------------------------------------------------------------------------

    def topics(self) -> list[TopicSummary]:
        metadata = self.metadata()
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

    def exists(self, topic: str) -> bool:
        return _exists(self.metadata(), topic)

    def describe(self, topic: str) -> TopicDescription:
        try:
            description = self._wait(
                lambda: self._admin.describe_topics(TopicCollection([topic]))[topic]
            )
        except KafkaException as exc:
            if clients.error_code(exc) == KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise self._missing(topic) from None
            raise
        ids = [p.id for p in description.partitions]
        starts = self._offsets(topic, ids, _EARLIEST)
        ends = self._offsets(topic, ids, _LATEST)
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
        self,
        name: str,
        partitions: int | None = None,
        replication_factor: int | None = None,
        config: dict[str, str] | None = None,
        *,
        validate_only: bool = False,
        exist_ok: bool = False,
    ) -> bool:
        """Create a topic (None: the broker's default partitions and replication factor);
        False when it exists and `exist_ok` (another worker created it first). Raises
        StartupError naming the topic when it exists or the broker refuses it."""
        new = NewTopic(
            name,
            num_partitions=partitions if partitions is not None else -1,
            replication_factor=replication_factor if replication_factor is not None else -1,
            config=dict(config or {}),
        )
        try:
            self._wait(lambda: self._admin.create_topics([new], validate_only=validate_only)[name])
            if not validate_only:
                self._topic_access.pop(name, None)  # asked again: it exists now
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
            self._await_leaders(name)
        return True

    def _await_leaders(self, topic: str) -> None:
        """Until every partition of the new `topic` has a leader: the next request (produce,
        describe, list offsets) would otherwise meet UNKNOWN_TOPIC_OR_PART or
        NOT_LEADER_FOR_PARTITION."""
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            found = self.metadata().topics.get(topic)
            if (
                found is not None
                and found.error is None
                and found.partitions
                and all(p.leader >= 0 for p in found.partitions.values())
            ):
                return
            time.sleep(0.05)

    def app_topics(self, app: App, settings: Settings | None = None) -> list[AppTopic]:
        """Every topic `app` consumes or writes, as its handlers will run with `settings`
        (handlers.<name>.topics and the rest applied): sources, retry topics, DLQs, outputs."""
        from kafkaworker.runtime.failures.retrytopics import RetryRoutes  # noqa: PLC0415

        settings = settings or self.settings
        found: dict[str, AppTopic] = {}
        for spec in resolve_specs(app, settings):
            wanted = [AppTopic(t, "source", spec.name) for t in spec.topics]
            wanted += [
                AppTopic(s.topic, "retry", spec.name, (s.source,))
                for s in RetryRoutes(spec.topics, spec.retry_topics).stages
            ]
            if spec.dlq is not None:
                wanted.append(AppTopic(spec.dlq, "dlq", spec.name, spec.topics))
            if spec.output is not None:
                wanted.append(AppTopic(spec.output, "output", spec.name))
            for topic in wanted:
                found.setdefault(topic.topic, topic)
        return list(found.values())

    def create_app_topics(
        self,
        app: App,
        settings: Settings | None = None,
        *,
        partitions: int | None = None,
        replication_factor: int | None = None,
    ) -> list[tuple[AppTopic, bool]]:
        """Create the topics of `app` that are missing: sources and outputs with `partitions`
        (None: the broker's default), retry topics and DLQs sized as `run` would create them.
        Each topic with whether it was created (False: it existed)."""
        settings = settings or self.settings
        wanted = self.app_topics(app, settings)
        done: list[tuple[AppTopic, bool]] = []
        # Sources and outputs first: retry topics and DLQs take their size from them.
        for group in ([t for t in wanted if not t.sized_like], [t for t in wanted if t.sized_like]):
            metadata = self.metadata()
            for topic in group:
                if _exists(metadata, topic.topic):
                    done.append((topic, False))
                    continue
                size, replicas = self._shape(topic, metadata, settings)
                if not topic.sized_like:
                    size, replicas = partitions, replication_factor
                done.append((topic, self.create_topic(topic.topic, size, replicas, exist_ok=True)))
        return done

    @staticmethod
    def _shape(topic: AppTopic, metadata: Any, settings: Settings) -> tuple[int | None, int | None]:
        """The partitions and replication factor `run` creates `topic` with (None: the
        broker's default)."""
        if topic.kind == "dlq":
            replicas = settings.dead_letter.replication_factor
            if settings.dead_letter.partitions:
                return settings.dead_letter.partitions, replicas
        else:
            replicas = None
        sizes = [
            len(metadata.topics[name].partitions)
            for name in topic.sized_like
            if _exists(metadata, name)
        ]
        return (max(sizes) if sizes else None), replicas

    # -- access (ACLs) ------------------------------------------------------------------------

    def topic_operations(self, topic: str) -> frozenset[str] | None:
        """What this client may do with `topic` as the cluster's ACLs say (READ, WRITE,
        DESCRIBE...); None when the topic does not exist; empty when it may not even describe
        it (Kafka then does not say whether it exists). Asked once per topic (see
        describe_access) until the topic is created through this admin."""
        if topic not in self._topic_access:
            self.describe_access([topic])
        return self._topic_access[topic]

    def describe_access(self, topics: Iterable[str]) -> None:
        """Ask for the operations allowed on `topics` in one request (a preflight asks about
        every topic of every handler: one round trip, not one per topic and handler)."""
        wanted = sorted(set(topics) - set(self._topic_access))
        if not wanted:
            return
        try:
            futures = self._call(
                lambda: self._admin.describe_topics(
                    TopicCollection(wanted), include_authorized_operations=True
                )
            )
        except KafkaException as exc:
            for topic in wanted:
                self._topic_access[topic] = self._denied_or_unknown(exc, "topic", topic)
            return
        for topic in wanted:
            try:
                found = self._call(partial(self._result, futures[topic]))
            except KafkaException as exc:
                self._topic_access[topic] = self._denied_or_unknown(exc, "topic", topic)
            else:
                self._topic_access[topic] = _operations(found.authorized_operations)

    def _result(self, future: Future[T]) -> T:
        return clients.result(future, self._left(), self.watch)

    def group_operations(self, group: str) -> frozenset[str]:
        """What this client may do with consumer group `group`; empty when it may not
        describe it."""
        if group not in self._group_access:
            try:
                found = self._wait(
                    lambda: self._admin.describe_consumer_groups(
                        [group], include_authorized_operations=True
                    )[group]
                )
            except KafkaException as exc:
                access = self._denied_or_unknown(exc, "group", group)
                self._group_access[group] = _UNKNOWN_ACCESS if access is None else access
            else:
                self._group_access[group] = _operations(found.authorized_operations)
        return self._group_access[group]

    def _denied_or_unknown(
        self, exc: KafkaException, kind: str, name: str
    ) -> frozenset[str] | None:
        """An error describing a topic or group: denied (empty), missing (None), or anything
        else (an older or Kafka-compatible broker without the API...): unknown, allowed as far
        as this check goes (the first real request will say), with a warning."""
        code = clients.error_code(exc)
        if code in (KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.GROUP_AUTHORIZATION_FAILED):
            return frozenset()
        if code == KafkaError.UNKNOWN_TOPIC_OR_PART:
            return None
        log.warning(
            "cannot ask the cluster what this client may do; not checked",
            kind=kind,
            name=name,
            error=clients.reason(exc),
        )
        return _UNKNOWN_ACCESS

    def require(self, kind: str, name: str, operation: str, role: str) -> None:
        """Raise the one line for a missing ACL: `operation` (READ, WRITE) on topic or group
        `name`, which the app uses as `role` (e.g. "source of handler 'h'")."""
        operations = self.group_operations(name) if kind == "group" else self.topic_operations(name)
        if operations is None or operation in operations:
            return
        who = principal(self.settings)
        missing = operation.title() if operations else f"Describe and {operation.title()}"
        raise StartupError(
            f"{who} is not authorized to {missing} {kind} {name!r} ({role}) on "
            f"{self.settings.kafka.bootstrap_servers}: grant it {missing} on the {kind} "
            "(an ACL), or fix the name"
        )

    # -- groups and offsets -----------------------------------------------------------------

    def group(self, group: str, topic: str | None = None, *, time_lag: bool = True) -> GroupOffsets:
        """The group's state, members and, per partition it committed (or of `topic`), the
        committed offset, log end, lag and time lag."""
        description = self._wait(lambda: self._admin.describe_consumer_groups([group])[group])
        members = [
            Member(
                m.member_id,
                m.client_id,
                m.host,
                [f"{tp.topic}[{tp.partition}]" for tp in m.assignment.topic_partitions],
            )
            for m in description.members
        ]
        committed = self._committed(group, topic)
        # Every partition of each topic: one the group never committed is all lag (counted
        # from the log start), not a row to leave out.
        metadata = self.metadata()
        for name in {topic} if topic is not None else {t for t, _ in committed}:
            found = metadata.topics.get(name)
            if found is None or found.error is not None:
                if name == topic:
                    raise self._missing(name)
                continue  # deleted since the group committed to it
            for partition in found.partitions:
                committed.setdefault((name, partition), None)
        by_topic: dict[str, list[int]] = {}
        for t, p in committed:
            by_topic.setdefault(t, []).append(p)
        rows: list[PartitionLag] = []
        for t, ids in sorted(by_topic.items()):
            starts = self._offsets(t, ids, _EARLIEST)
            ends = self._offsets(t, ids, _LATEST)
            for p in sorted(ids):
                position = committed[(t, p)]
                base = position if position is not None else starts[p]
                rows.append(
                    PartitionLag(t, p, position, starts[p], ends[p], max(0, ends[p] - base), None)
                )
        if time_lag:
            rows = self._with_time_lag(rows)
        return GroupOffsets(group, _state_name(description.state), members, rows)

    def reset_offsets(
        self,
        group: str,
        topic: str,
        *,
        to_earliest: bool = False,
        to_latest: bool = False,
        to_offset: int | None = None,
        to_datetime: datetime | None = None,
        shift_by: int | None = None,
        partitions: Sequence[int] | None = None,
        execute: bool = False,
    ) -> list[OffsetChange]:
        """Where the group's offsets on `topic` would move (`execute`: move them). Exactly one
        selector. Refused while the group has active members: their commits would win."""
        selectors = [to_earliest, to_latest, to_offset is not None]
        selectors += [to_datetime is not None, shift_by is not None]
        if sum(selectors) != 1:
            raise ConfigError(
                "give exactly one of to_earliest, to_latest, to_offset, to_datetime, shift_by"
            )
        description = self._wait(lambda: self._admin.describe_consumer_groups([group])[group])
        if description.members:
            clients_seen = ", ".join(sorted({m.client_id for m in description.members}))
            raise OffsetResetRefused(
                f"group {group!r} has {len(description.members)} active member(s) "
                f"({clients_seen}): stop its workers first, then reset"
            )
        ids = self._partition_ids(topic)
        if partitions:
            unknown = sorted(set(partitions) - set(ids))
            if unknown:
                raise ConfigError(
                    f"topic {topic!r} has partitions 0-{len(ids) - 1}; there is no {unknown[0]}"
                )
            ids = sorted(set(partitions))
        current = self._committed(group, topic)
        starts = self._offsets(topic, ids, _EARLIEST)
        ends = self._offsets(topic, ids, _LATEST)
        if to_datetime is not None:
            stamp = to_datetime if to_datetime.tzinfo else to_datetime.replace(tzinfo=UTC)
            at = self._offsets(topic, ids, OffsetSpec.for_timestamp(int(stamp.timestamp() * 1000)))
        changes = []
        for p in ids:
            now = current.get((topic, p))
            if to_earliest:
                target = starts[p]
            elif to_latest:
                target = ends[p]
            elif to_offset is not None:
                target = to_offset
            elif to_datetime is not None:
                target = at[p] if at[p] >= 0 else ends[p]  # none that late: the end
            else:
                assert shift_by is not None
                target = (now if now is not None else starts[p]) + shift_by
            target = min(max(target, starts[p]), ends[p])  # within what the log holds
            changes.append(OffsetChange(topic, p, now, target))
        if execute and changes:
            request = ConsumerGroupTopicPartitions(
                group, [TopicPartition(c.topic, c.partition, c.target) for c in changes]
            )
            self._wait(lambda: self._admin.alter_consumer_group_offsets([request])[group])
        return changes

    # -- the app's view -------------------------------------------------------------------

    def lag(self, app: App, settings: Settings | None = None) -> dict[str, GroupOffsets]:
        """Per handler of `app`: its group's offsets on the topics it consumes."""
        from kafkaworker.runtime.failures.retrytopics import RetryRoutes  # noqa: PLC0415

        found = {}
        for spec in resolve_specs(app, settings or self.settings):
            if spec.mode == "queue":
                continue  # a share group: see share_groups() and SHARE_GROUP_NOT_DESCRIBED
            topics = {
                *spec.topics,
                *(s.topic for s in RetryRoutes(spec.topics, spec.retry_topics).stages),
            }
            offsets = self.group(spec.group or app.name)
            mine = [p for p in offsets.partitions if p.topic in topics]
            known = {p.topic for p in mine}
            for topic in sorted(topics - known):  # never committed: all of it is lag
                if self.exists(topic):
                    mine += self.group(spec.group or app.name, topic).partitions
            found[spec.name] = GroupOffsets(offsets.group, offsets.state, offsets.members, mine)
        return found

    def check(self, app: App, settings: Settings | None = None) -> list[Check]:
        """A preflight that consumes nothing: one Check per thing `kafkaworker run` needs."""
        settings = settings or self.settings
        checks: list[Check] = []
        try:
            metadata = self.metadata()
        except StartupError as exc:
            return [Check("brokers", False, str(exc))]
        brokers = len(metadata.brokers)
        checks.append(
            Check("brokers", True, f"{brokers} broker(s) at {settings.kafka.bootstrap_servers}")
        )

        for wanted in self.app_topics(app, settings):
            name = f"{wanted.kind} topic {wanted.topic} ({wanted.handler})"
            # What the app does with it, as the ACLs must allow.
            needs = {"source": ["READ"], "retry": ["READ", "WRITE"]}.get(wanted.kind, ["WRITE"])
            visible = _exists(metadata, wanted.topic)
            if visible or self.topic_operations(wanted.topic) is not None:
                try:
                    for operation in needs:
                        self.require("topic", wanted.topic, operation, wanted.kind)
                except StartupError as exc:
                    checks.append(Check(name, False, str(exc)))
                    continue
                found = metadata.topics.get(wanted.topic)
                counted = f"{len(found.partitions)} partition(s), " if found is not None else ""
                may = " and ".join(op.title() for op in needs)
                checks.append(Check(name, True, f"exists, {counted}may {may}"))
            elif wanted.kind in ("source", "output"):
                checks.append(
                    Check(
                        name,
                        False,
                        "does not exist: create it (kafkaworker topics create --from MODULE:APP)",
                    )
                )
            elif not settings.dead_letter.create_topics:
                checks.append(
                    Check(name, False, "does not exist and dead_letter.create_topics is off")
                )
            else:
                try:
                    size, replicas = self._shape(wanted, metadata, settings)
                    self.create_topic(wanted.topic, size, replicas, validate_only=True)
                    checks.append(Check(name, True, "missing; it will be created at start-up"))
                except StartupError as exc:
                    checks.append(Check(name, False, f"missing and cannot be created: {exc}"))

        specs = resolve_specs(app, settings)
        shares = sorted({spec.group or app.name for spec in specs if spec.mode == "queue"})
        for group in shares:
            checks.append(self._share_group_check(group, settings))
        for group in sorted({spec.group or app.name for spec in specs if spec.mode != "queue"}):
            try:
                self.require("group", group, "READ", "consumer group")
                state = self.group(group, time_lag=False).state
                # A group never used yet is described as Dead: new, not broken.
                shown = "new (no offsets or members yet)" if state == "Dead" else state
                checks.append(Check(f"group {group}", True, f"may Read; {shown}"))
            except KafkaWorkerError as exc:
                checks.append(Check(f"group {group}", False, str(exc)))
        return checks

    def _share_group_check(self, group: str, settings: Settings) -> Check:
        """A queue-mode handler's share group: its configs readable, and what start-up will
        write (share.auto.offset.reset), read only."""
        from kafkaworker.runtime.source.share_group import prepare_share_group  # noqa: PLC0415

        name = f"share group {group}"
        try:
            found = prepare_share_group(settings, group, change=False)
        except KafkaWorkerError as exc:
            return Check(name, False, str(exc))
        reset = f"share.auto.offset.reset {found.auto_offset_reset}"
        if found.reset_to_write is not None:
            reset += f" (start-up sets {found.reset_to_write}: not set on the group)"
        return Check(
            name,
            True,
            f"configs readable: delivery limit {found.delivery_limit}, lock "
            f"{found.lock_seconds:g}s, {reset}",
        )

    # -- plumbing -------------------------------------------------------------------------

    def _wait(self, request: Callable[[], Future[T]]) -> T:
        """The result of the admin request `request()` makes; see _call."""
        return self._call(lambda: clients.result(request(), self._left(), self.watch))

    def _call(self, call: Callable[[], T]) -> T:
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
                if not _retriable(exc) or self._left() <= 0:
                    raise
            time.sleep(0.1)

    def _left(self) -> float:
        return max(0.0, self._deadline - time.monotonic())

    def metadata(self) -> Any:
        """The cluster's metadata (confluent_kafka ClusterMetadata): brokers, topics."""
        return clients.metadata(self._admin, self.settings, self.timeout, self.watch)

    def _partition_ids(self, topic: str) -> list[int]:
        found = self.metadata().topics.get(topic)
        if found is None or found.error is not None:
            raise self._missing(topic)
        return sorted(found.partitions)

    def _missing(self, topic: str) -> StartupError:
        return StartupError(
            f"topic {topic!r} does not exist on {self.settings.kafka.bootstrap_servers}: "
            "check its name (kafkaworker topics list)"
        )

    def _offsets(self, topic: str, partitions: Iterable[int], spec: OffsetSpec) -> dict[int, int]:
        request = {TopicPartition(topic, p): spec for p in partitions}
        if not request:
            return {}
        found = self._call(lambda: clients.results(self._admin.list_offsets(request), self._left()))
        return {tp.partition: info.offset for tp, info in found.items()}

    def _committed(self, group: str, topic: str | None) -> dict[tuple[str, int], int | None]:
        partitions = None
        if topic is not None:
            partitions = [TopicPartition(topic, p) for p in self._partition_ids(topic)]
        request = ConsumerGroupTopicPartitions(group, partitions)
        found = self._wait(lambda: self._admin.list_consumer_group_offsets([request])[group])
        return {
            (tp.topic, tp.partition): tp.offset if tp.offset >= 0 else None
            for tp in found.topic_partitions
            if tp.error is None and (tp.offset >= 0 or topic is not None)
        }

    def _with_time_lag(self, rows: list[PartitionLag]) -> list[PartitionLag]:
        """Each lagging partition's time lag: the age of its first record not consumed yet,
        read with a consumer that joins no group and commits nothing."""
        lagging = [r for r in rows if r.lag > 0]
        if not lagging:
            return rows
        stamps = _first_timestamps(
            self.settings,
            [
                (r.topic, r.partition, r.committed if r.committed is not None else r.log_start)
                for r in lagging
            ],
            timeout=min(self.timeout, 10.0),
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


# What a describe that did not say (an older broker, or one that sent an empty list after a
# describe that itself proved Describe) counts as: not a reason to refuse.
_UNKNOWN_ACCESS = frozenset({"ALL", "READ", "WRITE", "DESCRIBE", "CREATE"})


def _operations(operations: Any) -> frozenset[str]:
    """AclOperations as names; unknown when the broker did not say."""
    if not operations:
        return _UNKNOWN_ACCESS
    return frozenset(op.name for op in operations)


def principal(settings: Settings) -> str:
    """Who the cluster sees, as far as the settings tell."""
    security = settings.kafka.security
    if security.sasl is not None:
        if security.sasl.oauthbearer is not None:
            client = security.sasl.oauthbearer.client_id
            return f"OAuth client {client!r}" if client else "the OAuth token's principal"
        return f"user {security.sasl.username!r}"
    if security.ssl.certificate_location is not None:
        return f"the principal of certificate {str(security.ssl.certificate_location)!r}"
    return "this client"


def _exists(metadata: Any, topic: str) -> bool:
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


def to_json(value: Any) -> Any:
    """A dataclass (or a list or dict of them) as plain JSON-able values."""
    if isinstance(value, list):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return value

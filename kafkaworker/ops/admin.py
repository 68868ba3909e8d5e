"""KafkaAdmin: the cluster operations a team running workers needs, in one object: topics,
group offsets and moving them (by offset or by time: kafkax's SetOffset and SetOffsetAt), lag,
access checks and a preflight. They are behind `kafkaworker topics | offsets | lag | check`,
and usable from Python:

    from kafkaworker import load_settings
    from kafkaworker.ops import KafkaAdmin

    with KafkaAdmin(load_settings()) as admin:
        admin.create_topic("orders", partitions=8)
        plan = admin.reset_offsets("orders-service", "orders", to_datetime=yesterday)
        admin.reset_offsets("orders-service", "orders", to_datetime=yesterday, execute=True)

Every call waits at most `startup_timeout` for the cluster (in slices, so Ctrl+C is felt at
once) and fails with one line saying what is wrong and what to do. The work is done by
topics.py, groups.py, access.py and checks.py over one AdminConnection (connection.py): this
class is the one their users call.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from kafkaworker.ops.access import Access
from kafkaworker.ops.checks import AppTopic, Check, app_topics, check, create_app_topics
from kafkaworker.ops.connection import AdminConnection, exists
from kafkaworker.ops.groups import (
    GroupOffsets,
    OffsetChange,
    ResetTarget,
    app_lag,
    group_offsets,
    reset_offsets,
)
from kafkaworker.ops.topics import (
    TopicDescription,
    TopicSummary,
    create_topic,
    describe,
    list_topics,
)
from kafkaworker.settings import Settings

if TYPE_CHECKING:
    from kafkaworker.app import App


class KafkaAdmin(contextlib.AbstractContextManager["KafkaAdmin"]):
    """One AdminClient (and, for time lag, a short-lived consumer) for a run of operations."""

    def __init__(self, settings: Settings, *, timeout: float | None = None) -> None:
        self.settings = settings
        self.timeout = timeout if timeout is not None else settings.startup_timeout
        self._connection = AdminConnection(settings, self.timeout)
        self.watch = self._connection.watch
        self._access = Access(self._connection)

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Let the client go now (its threads and connections), not at a garbage collection."""
        self._connection.close()

    def metadata(self, *, tell_waiting: bool = False) -> Any:
        """The cluster's metadata (confluent_kafka ClusterMetadata): brokers, topics.
        `tell_waiting`: log once that it waits, for whom and how long, when no answer came
        within a second."""
        return self._connection.metadata(tell_waiting=tell_waiting)

    # -- topics -------------------------------------------------------------------------------

    def topics(self) -> list[TopicSummary]:
        return list_topics(self._connection)

    def exists(self, topic: str) -> bool:
        return exists(self.metadata(), topic)

    def describe(self, topic: str) -> TopicDescription:
        return describe(self._connection, topic)

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
        created = create_topic(
            self._connection,
            name,
            partitions,
            replication_factor,
            config,
            validate_only=validate_only,
            exist_ok=exist_ok,
        )
        if created and not validate_only:
            self._access.forget(name)  # asked again: it exists now
        return created

    # -- access (ACLs) ------------------------------------------------------------------------

    def topic_operations(self, topic: str) -> frozenset[str] | None:
        """What this client may do with `topic` (READ, WRITE, DESCRIBE...); None when the
        topic does not exist; empty when it may not even describe it."""
        return self._access.topic_operations(topic)

    def describe_access(self, topics: Iterable[str]) -> None:
        """Ask for the operations allowed on `topics` in one request."""
        self._access.describe_access(topics)

    def group_operations(self, group: str) -> frozenset[str]:
        return self._access.group_operations(group)

    def require(self, kind: str, name: str, operation: str, role: str) -> None:
        """Raise the one line for a missing ACL: `operation` (READ, WRITE) on topic or group
        `name`, which the app uses as `role` (e.g. "source of handler 'h'")."""
        self._access.require(kind, name, operation, role)

    # -- groups and offsets -------------------------------------------------------------------

    def group(self, group: str, topic: str | None = None, *, time_lag: bool = True) -> GroupOffsets:
        """The group's state, members and, per partition it committed (or of `topic`), the
        committed offset, log end, lag and time lag."""
        return group_offsets(self._connection, group, topic, time_lag=time_lag)

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
        allow_new_group: bool = False,
    ) -> list[OffsetChange]:
        """Where the group's offsets on `topic` would move (`execute`: move them). Exactly one
        selector. Executing is refused while the group has active members (their commits
        would win), and for a group with no committed offsets at all unless
        `allow_new_group` (a typo of a group's name would create a new group)."""
        to = ResetTarget(to_earliest, to_latest, to_offset, to_datetime, shift_by)
        return reset_offsets(
            self._connection,
            group,
            topic,
            to,
            partitions=partitions,
            execute=execute,
            allow_new_group=allow_new_group,
        )

    # -- the app's view -----------------------------------------------------------------------

    def app_topics(self, app: App, settings: Settings | None = None) -> list[AppTopic]:
        """Every topic `app` consumes or writes, as its handlers will run with `settings`
        (handlers.<name>.topics and the rest applied): sources, retry topics, DLQs, outputs."""
        return app_topics(app, settings or self.settings)

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
        return create_app_topics(
            self._connection,
            self._access,
            app,
            settings or self.settings,
            partitions=partitions,
            replication_factor=replication_factor,
        )

    def lag(self, app: App, settings: Settings | None = None) -> dict[str, GroupOffsets]:
        """Per handler of `app`: its group's offsets on the topics it consumes."""
        return app_lag(self._connection, app, settings or self.settings)

    def check(self, app: App, settings: Settings | None = None) -> list[Check]:
        """A preflight that consumes nothing: one Check per thing `kafkaworker run` needs."""
        return check(self._connection, self._access, app, settings or self.settings)

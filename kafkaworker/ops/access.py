"""Access checks: what the cluster's ACLs let this client do with a topic or a group, asked
once per name, and the one line for an operation they do not allow."""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial
from typing import Any

import structlog
from confluent_kafka import KafkaError, KafkaException, TopicCollection

from kafkaworker import clients
from kafkaworker.errors import StartupError
from kafkaworker.ops.connection import AdminConnection
from kafkaworker.settings import Settings

log = structlog.get_logger("kafkaworker.ops")

# What a describe that did not say (an older broker, or one that sent an empty list after a
# describe that itself proved Describe) counts as: not a reason to refuse.
_UNKNOWN_ACCESS = frozenset({"ALL", "READ", "WRITE", "DESCRIBE", "CREATE"})


class Access:
    """The operations allowed on topics and groups, as the cluster said them (cached)."""

    def __init__(self, connection: AdminConnection) -> None:
        self._connection = connection
        self._topics: dict[str, frozenset[str] | None] = {}
        self._groups: dict[str, frozenset[str]] = {}

    def forget(self, topic: str) -> None:
        """`topic` was just created: ask again next time."""
        self._topics.pop(topic, None)

    def topic_operations(self, topic: str) -> frozenset[str] | None:
        """What this client may do with `topic` as the cluster's ACLs say (READ, WRITE,
        DESCRIBE...); None when the topic does not exist; empty when it may not even describe
        it (Kafka then does not say whether it exists). Asked once per topic (see
        describe_access) until the topic is created through this admin."""
        if topic not in self._topics:
            self.describe_access([topic])
        return self._topics[topic]

    def describe_access(self, topics: Iterable[str]) -> None:
        """Ask for the operations allowed on `topics` in one request (a preflight asks about
        every topic of every handler: one round trip, not one per topic and handler)."""
        wanted = sorted(set(topics) - set(self._topics))
        if not wanted:
            return
        connection = self._connection
        try:
            futures = connection.call(
                lambda: connection.client.describe_topics(
                    TopicCollection(wanted), include_authorized_operations=True
                )
            )
        except KafkaException as exc:
            for topic in wanted:
                self._topics[topic] = _denied_or_unknown(exc, "topic", topic)
            return
        for topic in wanted:
            try:
                found = connection.call(partial(connection.result, futures[topic]))
            except KafkaException as exc:
                self._topics[topic] = _denied_or_unknown(exc, "topic", topic)
            else:
                self._topics[topic] = _operations(found.authorized_operations)

    def group_operations(self, group: str) -> frozenset[str]:
        """What this client may do with consumer group `group`; empty when it may not
        describe it."""
        if group not in self._groups:
            connection = self._connection
            try:
                found = connection.wait(
                    lambda: connection.client.describe_consumer_groups(
                        [group], include_authorized_operations=True
                    )[group]
                )
            except KafkaException as exc:
                access = _denied_or_unknown(exc, "group", group)
                self._groups[group] = _UNKNOWN_ACCESS if access is None else access
            except StartupError:
                watch = connection.watch
                if watch.failure is not None or watch.last is not None:
                    raise  # the cluster refused us (credentials, TLS): that line
                # No answer, from a cluster that answered the metadata request a moment ago:
                # the group's coordinator is still loading (COORDINATOR_LOAD_IN_PROGRESS on a
                # cluster just started, until its __consumer_offsets partitions are loaded; a
                # fresh-clone CI run on a loaded machine saw a three-node cluster take longer
                # than the 60 s start-up timeout). The consumer waits for its coordinator
                # anyway, and a group ACL it lacks is refused when it joins: not a reason to
                # say "cannot reach Kafka" and stop.
                log.warning(
                    "the group's coordinator did not answer; its ACLs are not checked before "
                    "the consumer joins",
                    group=group,
                    timeout=connection.timeout,
                )
                self._groups[group] = _UNKNOWN_ACCESS
            else:
                self._groups[group] = _operations(found.authorized_operations)
        return self._groups[group]

    def require(self, kind: str, name: str, operation: str, role: str) -> None:
        """Raise the one line for a missing ACL: `operation` (READ, WRITE) on topic or group
        `name`, which the app uses as `role` (e.g. "source of handler 'h'")."""
        operations = self.group_operations(name) if kind == "group" else self.topic_operations(name)
        if operations is None or operation in operations:
            return
        settings = self._connection.settings
        who = principal(settings)
        missing = operation.title() if operations else f"Describe and {operation.title()}"
        raise StartupError(
            f"{who} is not authorized to {missing} {kind} {name!r} ({role}) on "
            f"{settings.kafka.bootstrap_servers}: grant it {missing} on the {kind} "
            "(an ACL), or fix the name"
        )


def _denied_or_unknown(exc: KafkaException, kind: str, name: str) -> frozenset[str] | None:
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

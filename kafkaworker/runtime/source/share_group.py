"""A share group (KIP-932) as a queue-mode source: confluent-kafka's ShareConsumer, its
configuration, and the share group's own settings read (and set) through the admin API.

A share group hands the records of a partition out to all of its members, each record
acquired with a time-limited lock and acknowledged on its own: ACCEPT (done), RELEASE (deliver
it again, its delivery count raised) or REJECT (archived, never delivered again). The client
is not thread-safe: only the poll thread touches it, and the explicit acknowledgement mode
lets it fetch again only once every record of the previous fetch is acknowledged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import structlog
from confluent_kafka import AcknowledgeType, KafkaError, KafkaException, ShareConsumer
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ResourceType,
)

from kafkaworker import clients
from kafkaworker.errors import StartupError
from kafkaworker.handlers import HandlerSpec
from kafkaworker.runtime.source import Record
from kafkaworker.runtime.source.consumer_group import _silence
from kafkaworker.settings import Settings

log = structlog.get_logger("kafkaworker.source")

# The group configs (KIP-932) a queue-mode handler reads or sets, and the broker-wide
# defaults behind them (a group config not set dynamically falls back to those).
AUTO_OFFSET_RESET = "share.auto.offset.reset"
DELIVERY_COUNT_LIMIT = "share.delivery.count.limit"
LOCK_DURATION_MS = "share.record.lock.duration.ms"
BROKER_DELIVERY_COUNT_LIMIT = "group.share.delivery.count.limit"
BROKER_LOCK_DURATION_MS = "group.share.record.lock.duration.ms"

# Kafka's defaults, used when the cluster does not say (an older broker's describe).
_DEFAULT_DELIVERY_LIMIT = 5
_DEFAULT_LOCK_SECONDS = 30.0

# Records per fetch, in rounds of the workers (ROUNDS_PER_FETCH x concurrency). The client
# fetches again only once the whole previous fetch is acknowledged, so every fetch costs the
# workers a round trip and the tail of its last round; and a record's lock must not run out
# before a worker starts it, about ROUNDS_PER_FETCH - 1 handler calls after the fetch. S7 (one
# partition, a 2 ms handler, benchmarks/queue_mode.py): 4 rounds scaled 1 -> 4 processes at
# 0.56-0.69 of ideal, 8 rounds at 0.86-0.92. With 8, handlers up to ~4 s a record fit the
# default 30 s lock; slower ones lower kafka.share_consumer.max.poll.records (the poll thread
# warns when a fetch takes half the lock).
ROUNDS_PER_FETCH = 8


@dataclass(frozen=True, slots=True)
class ShareGroupConfig:
    """What the runtime must know of a share group's settings."""

    group: str
    delivery_limit: int  # deliveries before the broker archives a record
    lock_seconds: float  # how long a fetched record stays acquired by its member
    auto_offset_reset: str  # where a share-partition without state starts
    # prepare_share_group(change=False): the share.auto.offset.reset start-up would write.
    reset_to_write: str | None = None


def fetch_size(spec: HandlerSpec, settings: Settings) -> int:
    """Records a fetch should bring: `kafka.share_consumer.max.poll.records`, else
    ROUNDS_PER_FETCH rounds of the workers (at most poll_batch). The broker may bring more
    (whole record batches): the poller shares out the rest (poll/share_poller.py)."""
    configured = settings.kafka.share_consumer.get("max.poll.records")
    if configured is not None:
        return max(1, int(configured))
    return max(1, min(settings.poll_batch, spec.concurrency * ROUNDS_PER_FETCH))


def share_consumer_config(app_name: str, spec: HandlerSpec, settings: Settings) -> dict[str, Any]:
    """librdkafka configuration of a queue-mode handler's share consumer: the connection part
    of `kafka.consumer` (a share consumer refuses consumer-group properties such as
    session.timeout.ms), then `kafka.share_consumer`, whose raw keys win."""
    config: dict[str, Any] = {
        **clients.connection_config(settings, quiet=False),
        "group.id": spec.group or app_name,
        "client.id": f"{app_name}.{spec.name}",
        # Nothing is acknowledged before its handler is done (the implicit mode would ACCEPT
        # a whole fetch at the next poll, handled or not).
        "share.acknowledgement.mode": "explicit",
        "max.poll.records": fetch_size(spec, settings),
        # The group state ("up"), read from the statistics for readiness.
        "statistics.interval.ms": 1000,
    }
    config.update(settings.kafka.share_consumer)
    return config


def prepare_share_group(settings: Settings, group: str, *, change: bool = True) -> ShareGroupConfig:
    """Read the share group's delivery count limit and lock duration; and, when the group
    config `share.auto.offset.reset` was never set, set it to `auto_offset_reset` (Kafka
    starts a share group at the latest record, kafkaworker's default is the earliest), and
    say so in the log. A group config set by someone else is left as it is. `change=False`
    (kafkaworker check): read only; `reset_to_write` says what start-up would write."""
    timeout = settings.startup_timeout
    admin = AdminClient(clients.connection_config(settings))
    resource = ConfigResource(ResourceType.GROUP, group)
    broker_defaults: dict[str, str] = {}
    try:
        entries = _describe(admin, resource, timeout)
        reset = entries.get(AUTO_OFFSET_RESET)
        reset_to_write: str | None = None
        never_set = reset is None or reset.is_default or reset.source == _DEFAULT_SOURCE
        if never_set and not change:
            reset_to_write = settings.auto_offset_reset
            auto_offset_reset = str(reset.value) if reset is not None else "latest"
        elif never_set:
            wanted: str = settings.auto_offset_reset
            entry = ConfigEntry(
                AUTO_OFFSET_RESET, wanted, incremental_operation=AlterConfigOpType.SET
            )
            altered = ConfigResource(ResourceType.GROUP, group, incremental_configs=[entry])
            futures = admin.incremental_alter_configs([altered])
            clients.results(futures, timeout)
            log.info(
                "share group config set: a share-partition without state starts at the "
                f"{wanted} record (auto_offset_reset)",
                group=group,
                config=f"{AUTO_OFFSET_RESET}={wanted}",
                was=reset.value if reset is not None else None,
            )
            auto_offset_reset = wanted
        else:
            assert reset is not None  # set on the group
            auto_offset_reset = str(reset.value)
            if auto_offset_reset != settings.auto_offset_reset:
                log.info(
                    "the share group's own share.auto.offset.reset is kept (set on the group; "
                    "auto_offset_reset does not override it)",
                    group=group,
                    config=f"{AUTO_OFFSET_RESET}={auto_offset_reset}",
                    auto_offset_reset=settings.auto_offset_reset,
                )
        if DELIVERY_COUNT_LIMIT not in entries or LOCK_DURATION_MS not in entries:
            broker_defaults = _broker_defaults(admin, timeout)
    except KafkaException as exc:
        raise StartupError(
            f"cannot read or set the config of share group {group!r}: {clients.reason(exc)} "
            "(queue mode needs Kafka 4.1+ with share groups enabled, and the right to "
            "describe and alter the group's configs)"
        ) from None
    limit = _int(
        entries.get(DELIVERY_COUNT_LIMIT), broker_defaults.get(BROKER_DELIVERY_COUNT_LIMIT)
    )
    lock_ms = _int(entries.get(LOCK_DURATION_MS), broker_defaults.get(BROKER_LOCK_DURATION_MS))
    return ShareGroupConfig(
        group=group,
        delivery_limit=limit if limit is not None else _DEFAULT_DELIVERY_LIMIT,
        lock_seconds=lock_ms / 1000 if lock_ms is not None else _DEFAULT_LOCK_SECONDS,
        auto_offset_reset=auto_offset_reset,
        reset_to_write=reset_to_write,
    )


# confluent_kafka.admin.ConfigSource.DEFAULT_CONFIG: a config nobody set.
_DEFAULT_SOURCE = 5


def _describe(admin: AdminClient, resource: ConfigResource, timeout: float) -> dict[str, Any]:
    futures = admin.describe_configs([resource], request_timeout=timeout)
    [entries] = clients.results(futures, timeout).values()
    return dict(entries)


def _broker_defaults(admin: AdminClient, timeout: float) -> dict[str, str]:
    """The cluster-wide share group settings, from any one broker."""
    metadata = clients.call(lambda: admin.list_topics(timeout=timeout), timeout + 1)
    broker = next(iter(metadata.brokers))
    entries = _describe(admin, ConfigResource(ResourceType.BROKER, str(broker)), timeout)
    return {k: str(v.value) for k, v in entries.items() if k.startswith("group.share.")}


def _int(entry: Any, fallback: str | None) -> int | None:
    value = entry.value if entry is not None else fallback
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def new_share_consumer(config: dict[str, Any]) -> ShareConsumer:
    try:
        return ShareConsumer(config)
    except (KafkaException, ValueError, TypeError) as exc:
        raise StartupError(
            f"the share consumer configuration was rejected: {clients.reason(exc)}"
        ) from None


# What each acknowledgement type is called in logs and metrics.
ACK_NAMES = {
    AcknowledgeType.ACCEPT: "accept",
    AcknowledgeType.RELEASE: "release",
    AcknowledgeType.REJECT: "reject",
}


class ShareGroupSource:
    """One queue-mode handler's share consumer. Used from the poll thread only; its callbacks
    (statistics, acknowledgement results) run there too, inside poll() and commits."""

    def __init__(self, config: dict[str, Any], *, handler: str) -> None:
        self._handler = handler
        self._joined: Callable[[], None] | None = None
        self._silence = 0.0
        # Acknowledgements the broker refused since last asked (records whose lock ran out
        # and that were acquired again, by this member or another): see take_refused().
        self._refused = 0
        self._consumer = new_share_consumer({**config, "stats_cb": self._on_statistics})
        self._consumer.set_acknowledgement_commit_callback(self._on_acknowledged)

    def subscribe(self, topics: Sequence[str], on_joined: Callable[[], None]) -> None:
        self._joined = on_joined
        self._consumer.subscribe(list(topics))

    def fetch(self, timeout: float) -> list[Record]:
        """The next batch of acquired records (the acknowledgements made since the last fetch
        travel with the request). Every record of the previous batch must be acknowledged."""
        return list(self._consumer.poll(timeout))

    def acknowledge(self, topic: str, partition: int, offset: int, kind: AcknowledgeType) -> bool:
        """Record an acknowledgement (sent with the next fetch or commit); False when the
        client no longer holds the record (its lock ran out)."""
        try:
            self._consumer.acknowledge_offset(topic, partition, offset, kind)
        except Exception as exc:  # noqa: BLE001 - IllegalStateException: not in flight any more
            log.warning(
                "cannot acknowledge a record: the client no longer holds it (its lock ran "
                "out?); the broker delivers it again",
                handler=self._handler,
                record=f"{topic}[{partition}]@{offset}",
                acknowledgement=ACK_NAMES.get(kind, str(kind)),
                reason=" ".join(str(exc).split()),
            )
            self._refused += 1
            return False
        return True

    def commit(self) -> None:
        """Send the acknowledgements made so far now, without waiting for the answer."""
        self._consumer.commit_async()

    def commit_sync(self, timeout: float) -> None:
        """Send the acknowledgements made so far and wait for the broker's answer."""
        for tp, error in self._consumer.commit_sync(timeout).items():
            if error is not None:
                log.warning(
                    "acknowledgements refused",
                    handler=self._handler,
                    partition=f"{tp.topic}[{tp.partition}]",
                    error=str(error),
                )

    def take_refused(self) -> int:
        refused, self._refused = self._refused, 0
        return refused

    def silence(self) -> float:
        return self._silence

    def close(self) -> None:
        """Commit what is acknowledged and leave the share group (records still acquired
        are released by the broker when the member leaves, or when their locks run out)."""
        self._consumer.close()

    # -- callbacks, on the poll thread ------------------------------------------------------

    def _on_acknowledged(self, offsets: dict[Any, set[int]], error: KafkaException | None) -> None:
        if error is None:
            return
        count = sum(len(v) for v in offsets.values())
        self._refused += count
        first = error.args[0] if error.args else None
        code = first.code() if isinstance(first, KafkaError) else None
        log.warning(
            "the broker refused acknowledgements (records whose lock ran out are delivered again)",
            handler=self._handler,
            records=count,
            partitions=sorted(f"{tp.topic}[{tp.partition}]" for tp in offsets),
            error=str(error),
            code=code,
        )

    def _on_statistics(self, statistics: str) -> None:
        stats = orjson.loads(statistics)
        self._silence = _silence(stats.get("brokers") or {})
        group = stats.get("cgrp") or {}
        if group.get("state") == "up" and self._joined is not None:
            self._joined()

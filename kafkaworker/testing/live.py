"""Helpers for tests against a real broker (the `kafka_broker` fixture, or any cluster):
create topics, produce values as the app's handlers decode them, read what the app wrote,
and wait for a group's commits.

Each call takes the bootstrap servers and makes its own short-lived client, so a test needs
nothing but `kafka_broker`. Waits poll the broker until a deadline, never sleep a fixed time,
and fail with an AssertionError saying what did not happen; records come back as the
TestClient's ProducedRecord, so one assertion reads the same against either.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from kafkaworker.app import App
from kafkaworker.handlers import resolve_specs
from kafkaworker.ops import KafkaAdmin
from kafkaworker.producer import HeaderList, Producer
from kafkaworker.serialization import Codec
from kafkaworker.settings import Settings, settings_for_run
from kafkaworker.testing.producer import ProducedRecord

__all__ = [
    "TopicFactory",
    "create_topic",
    "delete_topics",
    "produce",
    "read_topic",
    "wait_for_commit",
]

# The kafka_topic fixture: kafka_topic(partitions=1, config=None) -> a new topic's name.
TopicFactory = Callable[..., str]

# Long enough for a broker just started on a loaded 2-core machine to answer.
_TIMEOUT = 30.0


def broker_settings(
    bootstrap: str, app: App | None = None, overrides: Mapping[str, Any] | None = None
) -> Settings:
    """The settings the `kafka_worker` fixture runs `app` with: its own (App(settings=...))
    or the defaults, `overrides` merged key by key, pointed at `bootstrap`."""
    base = app.settings if app is not None and app.settings is not None else None
    if base is None:
        base = Settings.model_validate({})
    merged = settings_for_run(base, None, overrides or {})
    return settings_for_run(merged, None, {"kafka": {"bootstrap_servers": bootstrap}})


def create_topic(
    bootstrap: str,
    name: str | None = None,
    *,
    partitions: int = 1,
    replication_factor: int = 1,
    config: Mapping[str, str] | None = None,
) -> str:
    """Create a topic and return its name once every partition has a leader (the next
    produce would otherwise meet UNKNOWN_TOPIC_OR_PART). Without a name, a unique one
    (`test-<12 hex>`): tests sharing a broker then never see one another's records."""
    topic = name or f"test-{uuid.uuid4().hex[:12]}"
    with KafkaAdmin(broker_settings(bootstrap), timeout=_TIMEOUT) as admin:
        admin.create_topic(topic, partitions, replication_factor, dict(config or {}))
    return topic


def delete_topics(bootstrap: str, *prefixes: str) -> list[str]:
    """Delete each named topic and the topics named after it (`orders.dlq`,
    `orders.retry.5s` for `orders`); returns what was deleted."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    existing = admin.list_topics(timeout=_TIMEOUT).topics
    doomed = sorted(
        topic
        for topic in existing
        if any(topic == prefix or topic.startswith(f"{prefix}.") for prefix in prefixes)
    )
    if doomed:
        for future in admin.delete_topics(doomed, operation_timeout=_TIMEOUT).values():
            future.result(timeout=_TIMEOUT)
    return doomed


def produce(
    bootstrap: str,
    topic: str,
    values: Iterable[Any],
    *,
    key: bytes | str | None = None,
    keys: Sequence[bytes | str | None] | None = None,
    partitions: Sequence[int] | None = None,
    headers: HeaderList | None = None,
    codec: str | Codec | None = None,
    app: App | None = None,
    settings: Mapping[str, Any] | None = None,
) -> list[tuple[int, int]]:
    """Produce `values` to `topic`, each acknowledged by the broker (acks=all), and return
    their (partition, offset). `key` for every value, or `keys` one per value; keys go
    through the same partitioner as the Java client's, unless `partitions` (one per value)
    places each value.

    Encoded with `codec`; else, given `app`, with the codec of the app's handler of `topic`
    as `kafka_worker(app, settings=...)` runs it (so give the same `settings`): a model is
    encoded as its handler's "json_schema" codec registers it, through the settings'
    schema_registry. Else bytes go as they are and anything else as JSON."""
    values = list(values)
    for name, given in (("keys", keys), ("partitions", partitions)):
        if given is not None and len(given) != len(values):
            raise ValueError(f"{len(given)} {name} for {len(values)} values: give one per value")
    run_settings = broker_settings(bootstrap, app, settings)
    if codec is None and app is not None:
        codec = _handler_codec(app, run_settings, topic)
    producer = Producer(
        run_settings,
        client_id="kafkaworker.testing",
        schema_registry=app.schema_registry if app is not None else None,
    )
    try:
        futures = [
            producer.send(
                topic,
                value,
                key=keys[i] if keys is not None else key,
                headers=headers,
                partition=partitions[i] if partitions is not None else None,
                codec=codec,
            )
            for i, value in enumerate(values)
        ]
        delivered = [future.result(timeout=_TIMEOUT) for future in futures]
    finally:
        producer.close(timeout=_TIMEOUT)
    return [(record.partition(), record.offset()) for record in delivered]  # type: ignore[misc]


def _handler_codec(app: App, settings: Settings, topic: str) -> str | Codec:
    """The codec of the app's handler(s) of `topic`; one line when there is none, or two
    handlers decode it differently."""
    specs = [spec for spec in resolve_specs(app, settings) if topic in spec.topics]
    if not specs:
        handled = sorted({t for spec in resolve_specs(app, settings) for t in spec.topics})
        raise ValueError(
            f"no handler of app {app.name!r} consumes {topic!r} (it consumes "
            f"{', '.join(handled)}): pass codec=..., or produce to one of those"
        )
    codecs = {id(spec.codec): spec.codec for spec in specs}
    if len(codecs) > 1:
        names = ", ".join(spec.name for spec in specs)
        raise ValueError(
            f"handlers {names} of app {app.name!r} consume {topic!r} with different codecs: "
            "pass codec=..."
        )
    return specs[0].codec


def read_topic(
    bootstrap: str,
    topic: str,
    count: int | None = None,
    *,
    timeout: float = _TIMEOUT,
) -> list[ProducedRecord]:
    """The records of `topic` from its start, by partition and offset.

    With `count`: as soon as that many have arrived (the app may still be writing them);
    fewer within `timeout` fail the test, saying how many came. Without: every record the
    topic holds now (up to each partition's log end at the call). Reads with no consumer
    group (partitions assigned, nothing committed), read_committed as kafkaworker's own
    consumers."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            # Required by the client; never joined nor committed to (assign, no commits).
            "group.id": "kafkaworker.testing.read_topic",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
        }
    )
    records: list[ProducedRecord] = []
    deadline = time.monotonic() + timeout
    try:
        partitions = _partitions(consumer, topic, deadline)
        ends = (
            {
                p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)[1]
                for p in partitions
            }
            if count is None
            else None
        )
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        positions = dict.fromkeys(partitions, 0)
        while True:
            if count is not None and len(records) >= count:
                break
            if ends is not None and all(positions[p] >= ends[p] for p in partitions):
                break
            if time.monotonic() > deadline:
                wanted = count if count is not None else sum((ends or {}).values())
                raise AssertionError(
                    f"{len(records)} of {wanted} record(s) arrived on {topic!r} within {timeout:g}s"
                )
            for message in consumer.consume(500, timeout=0.2):
                if message.error() is not None:
                    raise KafkaException(message.error())
                positions[message.partition()] = message.offset() + 1  # type: ignore[index, operator]
                records.append(_record(message))
    finally:
        consumer.close()
    records.sort(key=lambda r: (r.partition, r.offset))
    return records[:count] if count is not None else records


def _partitions(consumer: Consumer, topic: str, deadline: float) -> list[int]:
    """The topic's partitions, once its metadata lists it (a topic just created by the app
    may take a moment to appear)."""
    while True:
        found = consumer.list_topics(topic, timeout=max(0.1, deadline - time.monotonic()))
        metadata = found.topics.get(topic)
        if metadata is not None and metadata.error is None and metadata.partitions:
            return sorted(metadata.partitions)
        if time.monotonic() > deadline:
            raise AssertionError(f"topic {topic!r} does not exist")
        time.sleep(0.1)


def _record(message: Any) -> ProducedRecord:
    return ProducedRecord(
        message.topic(),
        message.partition(),
        message.offset(),
        message.key(),
        message.value(),
        list(message.headers() or ()),
    )


def wait_for_commit(
    bootstrap: str,
    group: str,
    topic: str,
    *,
    offsets: Mapping[int, int] | None = None,
    timeout: float = _TIMEOUT,
) -> dict[int, int]:
    """Wait until consumer group `group` has committed, on every partition of `topic`, at
    least `offsets` (partition -> offset; default: each partition's log end now, i.e. the
    group has finished every record the topic holds); returns the committed offsets.
    Committed offsets are what a restarted worker resumes from: this is the moment a test
    may stop the worker without seeing a record again."""
    with KafkaAdmin(broker_settings(bootstrap), timeout=timeout) as admin:
        if offsets is None:
            offsets = {p.partition: p.log_end for p in admin.describe(topic).partitions}
        deadline = time.monotonic() + timeout
        while True:
            group_offsets = admin.group(group, topic, time_lag=False)
            committed = {
                p.partition: p.committed if p.committed is not None else -1
                for p in group_offsets.partitions
            }
            behind = {p: o for p, o in offsets.items() if committed.get(p, -1) < o}
            if not behind:
                return committed
            if time.monotonic() > deadline:
                shown = ", ".join(
                    f"{topic}[{p}] at {_shown(committed.get(p, -1))} of {o}"
                    for p, o in sorted(behind.items())
                )
                raise AssertionError(f"group {group!r} did not commit within {timeout:g}s: {shown}")
            time.sleep(0.1)


def _shown(offset: int) -> str:
    return "nothing" if offset < 0 else str(offset)

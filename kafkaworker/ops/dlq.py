"""DLQ tooling: read dead-letter records, and replay them to where they came from.

`replay` keeps its progress in a consumer group, so a second run with the same options does
not replay the same records again. The group is `kafkaworker.replay.<dlq topic>`, suffixed
with a short hash of the filters and --to when any is given: runs with other filters keep
their own progress. Replayed records are the original key, value and headers byte for byte
(the kw.* failure headers are removed) plus `kw.replayed_from: <dlq>[<partition>]@<offset>`.
Progress is committed only after the broker acknowledged the replayed records.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from kafkaworker import clients
from kafkaworker.errors import KafkaWorkerError
from kafkaworker.headers import PREFIX, REPLAYED_FROM
from kafkaworker.message import Message
from kafkaworker.ops.admin import KafkaAdmin
from kafkaworker.producer import Producer
from kafkaworker.settings import Settings
from kafkaworker.tracing import trace_id_of

if TYPE_CHECKING:
    from kafkaworker.tracing.spans import ProcessSpans

REPLAY_CLIENT_ID = "kafkaworker.replay"


class DlqError(KafkaWorkerError):
    """A DLQ command cannot go on; the message says why and what to do."""


@dataclass(frozen=True)
class DeadLetterRecord:
    """One record of a DLQ topic, with its failure headers parsed."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]  # the original record's own headers
    failure: dict[str, str]  # kw.* headers, without the prefix

    @property
    def origin(self) -> str:
        f = self.failure
        return f"{f.get('original.topic', '?')}[{f.get('original.partition', '?')}]@" + (
            f.get("original.offset", "?")
        )

    @property
    def trace_id(self) -> str | None:
        """The trace the record carries (its traceparent: the DLQ write's, in the trace of
        the failed message when the worker traced), to look it up in the tracing backend."""
        return trace_id_of(self.headers)

    @property
    def failed_at(self) -> datetime | None:
        try:
            return datetime.fromisoformat(self.failure["failed_at"])
        except (KeyError, ValueError):
            return None

    def as_json(self, topic: str) -> dict[str, Any]:
        return {
            "dlq": {"topic": topic, "partition": self.partition, "offset": self.offset},
            "original": {
                "topic": self.failure.get("original.topic"),
                "partition": _int(self.failure.get("original.partition")),
                "offset": _int(self.failure.get("original.offset")),
                "timestamp": _int(self.failure.get("original.timestamp")),
            },
            "group": self.failure.get("group"),
            "handler": self.failure.get("handler"),
            "attempts": _int(self.failure.get("attempts")),
            "error": {
                "type": self.failure.get("error.type"),
                "message": self.failure.get("error.message"),
                "traceback": self.failure.get("error.traceback"),
            },
            "failed_at": self.failure.get("failed_at"),
            # Set when the record had been replayed from a DLQ before it failed again.
            "replayed_from": self.failure.get("replayed_from"),
            "trace_id": self.trace_id,
            "key": _text_or_base64(self.key),
            "value": _text_or_base64(self.value),
            "headers": [[k, _text_or_base64(v)] for k, v in self.headers],
        }


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _text_or_base64(data: bytes | None) -> str | dict[str, str] | None:
    if data is None:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(data).decode()}


def parse(record: Any) -> DeadLetterRecord:
    headers: list[tuple[str, bytes | None]] = []
    failure: dict[str, str] = {}
    for name, value in record.headers() or []:
        if name.startswith(PREFIX):
            failure[name[len(PREFIX) :]] = (value or b"").decode("utf-8", "replace")
        else:
            headers.append((name, value))
    return DeadLetterRecord(
        record.partition(), record.offset(), record.key(), record.value(), headers, failure
    )


@dataclass
class Reader:
    """Reads a DLQ topic from given positions up to its end as it was when reading began."""

    settings: Settings
    topic: str
    group: str | None = None
    consumer: Consumer = field(init=False)

    def __post_init__(self) -> None:
        self.consumer = Consumer(
            {
                **clients.connection_config(self.settings),
                "group.id": self.group or "kafkaworker.dlq-inspect",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
            }
        )

    def partitions(self) -> list[int]:
        # Through an admin client: its error_cb turns a refused connection (credentials, a
        # certificate) into its one line at once; a consumer would only time out.
        with KafkaAdmin(self.settings) as admin:
            metadata = admin.metadata()
        found = metadata.topics.get(self.topic)
        if found is None or found.error is not None:
            raise DlqError(
                f"topic {self.topic!r} does not exist on {self.settings.kafka.bootstrap_servers}:"
                " check the name (kafkaworker topics list)"
            )
        return sorted(found.partitions)

    def span(self, from_group: bool) -> dict[int, tuple[int, int]]:
        """Per partition, (start, end): the group's position (or the beginning) and the end."""
        partitions = self.partitions()
        committed = {p: OFFSET_BEGINNING for p in partitions}
        if from_group:
            wanted = [TopicPartition(self.topic, p) for p in partitions]
            for tp in clients.call(lambda: self.consumer.committed(wanted, timeout=10), 11):
                if tp.offset >= 0:
                    committed[tp.partition] = tp.offset
        span = {}
        for p in partitions:
            low, high = clients.call(partial(self._watermarks, p), 11)
            start = low if committed[p] == OFFSET_BEGINNING else max(low, committed[p])
            if start < high:
                span[p] = (start, high)
        return span

    def _watermarks(self, partition: int) -> tuple[int, int]:
        where = TopicPartition(self.topic, partition)
        return self.consumer.get_watermark_offsets(where, timeout=10)

    def read(self, span: dict[int, tuple[int, int]]) -> Iterator[DeadLetterRecord]:
        """Records in span order; stops when every partition reached its end."""
        if not span:
            return
        self.consumer.assign(
            [TopicPartition(self.topic, p, start) for p, (start, _) in span.items()]
        )
        remaining = {p for p, (start, end) in span.items() if start < end}
        idle_since = time.monotonic()
        while remaining:
            batch = self.consumer.consume(500, timeout=0.5)
            for record in batch:
                if record.error() is not None:
                    continue
                partition, offset = record.partition(), record.offset()
                if partition in remaining and offset is not None and offset < span[partition][1]:
                    yield parse(record)
            if batch:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > 30:
                raise DlqError(
                    f"no records arrived from {self.topic!r} for 30s; is the cluster reachable?"
                )
            # Done with a partition once its position reached the end seen at the start: by
            # position, not by record, since the last offsets may hold no record (markers).
            for tp in self.consumer.position([TopicPartition(self.topic, p) for p in remaining]):
                if tp.offset >= span[tp.partition][1]:
                    remaining.discard(tp.partition)

    def commit(self, positions: dict[int, int]) -> None:
        if positions:
            self.consumer.commit(
                offsets=[TopicPartition(self.topic, p, o) for p, o in positions.items()],
                asynchronous=False,
            )

    def close(self) -> None:
        """Leave; or, on Ctrl+C or SIGTERM, leave it to the process's exit: close() waits for
        the cluster (up to a timeout) when it does not answer, and this consumer joined no
        group and committed nothing that a close would flush."""
        exc = sys.exc_info()[1]
        if not isinstance(exc, KeyboardInterrupt | SystemExit):
            self.consumer.close()


@dataclass(frozen=True)
class ReplayFilter:
    error_type: str | None = None
    since: datetime | None = None

    def matches(self, record: DeadLetterRecord) -> bool:
        if self.error_type is not None:
            actual = record.failure.get("error.type", "")
            if actual != self.error_type and not actual.endswith("." + self.error_type):
                return False
        if self.since is not None:
            failed_at = record.failed_at
            if failed_at is None or failed_at < self.since:
                return False
        return True


def replay_group(topic: str, to: str | None, selection: ReplayFilter) -> str:
    options = [to, selection.error_type, selection.since.isoformat() if selection.since else None]
    if not any(options):
        return f"kafkaworker.replay.{topic}"
    digest = hashlib.sha256(repr(options).encode()).hexdigest()[:10]
    return f"kafkaworker.replay.{topic}.{digest}"


@dataclass
class ReplayResult:
    scanned: int = 0
    replayed: int = 0
    filtered_out: int = 0
    without_origin: int = 0


def replay(
    settings: Settings,
    topic: str,
    *,
    to: str | None = None,
    selection: ReplayFilter | None = None,
    limit: int | None = None,
    rate: float | None = None,
    dry_run: bool = False,
    group: str | None = None,
    on_record: Callable[[DeadLetterRecord, bool], None] | None = None,
    on_total: Callable[[int], None] | None = None,
) -> ReplayResult:
    """Re-publish the DLQ records of `topic` that match `selection` to their origin."""
    selection = selection or ReplayFilter()
    group = group or replay_group(topic, to, selection)
    reader = Reader(settings, topic, group)
    producer: Producer | None = None
    result = ReplayResult()
    positions: dict[int, int] = {}
    interval = 1.0 / rate if rate else 0.0
    next_at = time.monotonic()
    try:
        span = reader.span(from_group=True)
        # Once the cluster answered: an unreachable one is told in one line, not in the
        # producer's connection errors.
        producer = None if dry_run else Producer(settings, client_id=REPLAY_CLIENT_ID)
        spans = _replay_spans(group) if producer is not None and settings.tracing.enabled else None
        if on_total is not None:
            on_total(sum(end - start for start, end in span.values()))
        pending = []
        for record in reader.read(span):
            if limit is not None and result.replayed >= limit:
                break
            result.scanned += 1
            target = to or record.failure.get("original.topic")
            chosen = selection.matches(record)
            if chosen and not target:
                result.without_origin += 1
                chosen = False
            elif not chosen:
                result.filtered_out += 1
            if chosen:
                if interval:
                    next_at = max(next_at + interval, time.monotonic())
                    time.sleep(max(0.0, next_at - time.monotonic()))
                if producer is not None:
                    assert target is not None
                    # Traced: the replay is a new trace that links to the failed one (the DLQ
                    # record's traceparent), and the replayed record carries the new one.
                    traced = (
                        spans.processing(_as_message(topic, record))
                        if spans is not None
                        else contextlib.nullcontext()
                    )
                    with traced:
                        pending.append(
                            producer.send(
                                target,
                                record.value,
                                key=record.key,
                                headers=[
                                    *record.headers,
                                    (
                                        REPLAYED_FROM,
                                        f"{topic}[{record.partition}]@{record.offset}".encode(),
                                    ),
                                ],
                            )
                        )
                result.replayed += 1
            positions[record.partition] = record.offset + 1
            if on_record is not None:
                on_record(record, chosen)
            if len(pending) >= 500:
                _settle(pending)
                reader.commit(positions)
        if not dry_run:
            _settle(pending)
            reader.commit(positions)
    finally:
        reader.close()
        if producer is not None:
            producer.close()
    return result


def _replay_spans(group: str) -> ProcessSpans:
    """Replay's process spans: each a new trace linked to the DLQ record's (tracing on)."""
    from kafkaworker.tracing.spans import ProcessSpans  # noqa: PLC0415 - the otel extra

    return ProcessSpans(handler="dlq replay", group=group, client_id=REPLAY_CLIENT_ID, link=True)


def _as_message(topic: str, record: DeadLetterRecord) -> Message[Any]:
    return Message(
        topic,
        partition=record.partition,
        offset=record.offset,
        key=record.key,
        raw_value=record.value,
        headers=record.headers,
    )


def _settle(pending: list[Any]) -> None:
    """Wait for every replayed record's acknowledgement (raises the first failure)."""
    for future in pending:
        clients.result(future, 60)
    pending.clear()


def inspect(settings: Settings, topic: str, limit: int | None) -> Iterator[DeadLetterRecord]:
    reader = Reader(settings, topic)
    try:
        for count, record in enumerate(reader.read(reader.span(from_group=False)), start=1):
            yield record
            if limit is not None and count >= limit:
                return
    finally:
        reader.close()

"""MemoryProducer: a Producer that keeps what it is given in memory, for the test client."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import confluent_kafka
import orjson
from confluent_kafka import TIMESTAMP_CREATE_TIME
from typing_extensions import Unpack

from kafkaworker.producer import (
    TRANSACTION_SCOPE,
    ProduceError,
    Producer,
    SendOptions,
    _encode,
)
from kafkaworker.runtime.source import OffsetAndMetadata, Partition
from kafkaworker.runtime.source.memory import MemorySource


@dataclass(frozen=True)
class ProducedRecord:
    """A record the app produced: an output, a DLQ record or a retry-topic record."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]] = field(default_factory=list)

    def header(self, name: str, default: bytes | None = None) -> bytes | None:
        """The value of the last header called `name`, or `default`."""
        for header_name, value in reversed(self.headers):
            if header_name == name:
                return value
        return default

    def json(self) -> Any:
        """The value decoded as JSON."""
        return orjson.loads(self.value) if self.value is not None else None


class MemoryProducer(Producer):
    """Encodes like the real Producer (the same codecs, the same errors) and acknowledges at
    once; `records` is everything sent, in order."""

    def __init__(self) -> None:  # no librdkafka producer: nothing goes anywhere
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._next_offset: dict[tuple[str, int], int] = {}
        self.records: list[ProducedRecord] = []

    def send(
        self, topic: str, value: Any, **options: Unpack[SendOptions]
    ) -> Future[confluent_kafka.Message]:
        key, headers = options.get("key"), options.get("headers")
        partition, codec = options.get("partition"), options.get("codec")
        if self._closed.is_set():
            raise ProduceError(f"the producer is closed; cannot send to {topic!r}")
        payload = _encode(topic, value, codec)
        if (scope := TRANSACTION_SCOPE.get()) is not None:
            return scope.send(topic, payload, key, headers, partition)
        raw_key = key.encode() if isinstance(key, str) else key
        written = list(headers or ())
        with self._lock:
            where = (topic, partition or 0)
            offset = self._append(topic, where[1], raw_key, payload, written)  # type: ignore[arg-type]
        future: Future[confluent_kafka.Message] = Future()
        future.set_result(
            confluent_kafka.Message(
                topic=topic,
                partition=where[1],
                offset=offset,
                key=raw_key,
                value=payload,
                headers=written,
                timestamp=(TIMESTAMP_CREATE_TIME, 0),
            )
        )
        return future

    def _append(
        self,
        topic: str,
        partition: int,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes | None]],
    ) -> int:
        """Keep a record (under `_lock`); its offset."""
        where = (topic, partition)
        offset = self._next_offset.get(where, 0)
        self._next_offset[where] = offset + 1
        self.records.append(ProducedRecord(topic, partition, offset, key, value, headers))
        return offset

    def flush(self, timeout: float = 30.0) -> int:
        return 0

    def ping(self, timeout: float = 5.0) -> bool:
        return True

    def close(self, timeout: float = 30.0) -> int:
        self._closed.set()
        return 0

    def __iter__(self) -> Iterator[ProducedRecord]:
        with self._lock:
            return iter(list(self.records))


class MemoryTransactions:
    """An exactly_once handler's transactional producer in the TestClient: a transaction's
    records join `producer.records` only when it commits, together with its offsets (committed
    to the handler's in-memory source); an aborted transaction's records never appear, as a
    read_committed reader never sees them."""

    def __init__(self, producer: MemoryProducer, source: MemorySource) -> None:
        self._producer = producer
        self._source = source
        self._open: list[tuple[str, int, bytes | None, bytes | None, list[Any]]] | None = None
        self._offsets: dict[Partition, OffsetAndMetadata] = {}
        self.aborted = 0

    def init_transactions(self, timeout: float = -1) -> None:
        pass

    def begin_transaction(self) -> None:
        self._open, self._offsets = [], {}

    def produce(  # noqa: PLR0917 - confluent-kafka's own signature
        self,
        topic: str,
        value: str | bytes | None = None,
        key: str | bytes | None = None,
        partition: int = -1,
        callback: Any = None,
        on_delivery: Any = None,
        timestamp: int = 0,
        headers: Any = None,
    ) -> None:
        assert self._open is not None, "a record produced outside a transaction"
        raw_key = key.encode() if isinstance(key, str) else key
        raw_value = value.encode() if isinstance(value, str) else value
        self._open.append((topic, partition, raw_key, raw_value, list(headers or ())))

    def poll(self, timeout: float = -1) -> int:
        return 0

    def send_offsets_to_transaction(
        self,
        positions: list[confluent_kafka.TopicPartition],
        group_metadata: Any,
        timeout: float = -1,
    ) -> None:
        self._offsets = {
            Partition(tp.topic, tp.partition): OffsetAndMetadata(tp.offset, tp.metadata or "")
            for tp in positions
        }

    def commit_transaction(self, timeout: float = -1) -> None:
        assert self._open is not None, "no transaction to commit"
        with self._producer._lock:
            for topic, partition, key, value, headers in self._open:
                self._producer._append(topic, max(0, partition), key, value, headers)
        self._source.commit(self._offsets)
        self._open = None

    def abort_transaction(self, timeout: float = -1) -> None:
        self._open = None
        self.aborted += 1

    def flush(self, timeout: float = -1) -> int:
        return 0

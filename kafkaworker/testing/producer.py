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

from kafkaworker.producer import ProduceError, Producer, SendOptions, _encode


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
        raw_key = key.encode() if isinstance(key, str) else key
        written = list(headers or ())
        with self._lock:
            where = (topic, partition or 0)
            offset = self._next_offset.get(where, 0)
            self._next_offset[where] = offset + 1
            self.records.append(
                ProducedRecord(topic, where[1], offset, raw_key, payload, written)  # type: ignore[arg-type]
            )
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

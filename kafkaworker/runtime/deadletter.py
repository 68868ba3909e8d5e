"""Dead-letter records: the original record, byte for byte, plus why and where it failed.

The DLQ record keeps the original key, value and headers unchanged (also when the value could
not be decoded) and appends these headers, each a UTF-8 string:

    kw.original.topic, kw.original.partition, kw.original.offset,
    kw.original.timestamp   milliseconds since the epoch, -1 when the record had none
    kw.group, kw.handler, kw.attempts
    kw.error.type           module-qualified class name, e.g. builtins.ValueError
    kw.error.message
    kw.error.traceback      the formatted traceback, at most TRACEBACK_LIMIT bytes (its tail)
    kw.failed_at            ISO 8601, UTC

It is published synchronously (acks=all): the source offset counts as finished only once the
broker has acknowledged the DLQ record.
"""

from __future__ import annotations

import traceback
from datetime import UTC, datetime
from typing import Any

from kafkaworker.message import Message
from kafkaworker.producer import Producer

TRACEBACK_LIMIT = 8 * 1024
HEADER_PREFIX = "kw."


def error_type(error: BaseException) -> str:
    cls = type(error)
    return f"{cls.__module__}.{cls.__qualname__}"


def failure_headers(
    msg: Message[Any], *, group: str, handler: str, error: BaseException
) -> list[tuple[str, bytes]]:
    stamp = msg.timestamp
    formatted = "".join(traceback.format_exception(error)).encode()
    if len(formatted) > TRACEBACK_LIMIT:
        # The tail holds the innermost frames and the message: the part worth keeping.
        formatted = b"...\n" + formatted[-(TRACEBACK_LIMIT - 4) :]
    values = {
        "original.topic": msg.topic,
        "original.partition": str(msg.partition),
        "original.offset": str(msg.offset),
        "original.timestamp": str(int(stamp.timestamp() * 1000)) if stamp else "-1",
        "group": group,
        "handler": handler,
        "attempts": str(msg.attempt),
        "error.type": error_type(error),
        "error.message": str(error),
        "failed_at": datetime.now(UTC).isoformat(),
    }
    headers = [(HEADER_PREFIX + name, value.encode()) for name, value in values.items()]
    headers.insert(-1, (HEADER_PREFIX + "error.traceback", formatted))
    return headers


class DeadLetterPublisher:
    """Publishes a handler's failed messages to its DLQ topic, waiting for the ack."""

    def __init__(
        self, producer: Producer, topic: str, *, group: str, handler: str, timeout: float = 30.0
    ) -> None:
        self.producer = producer
        self.topic = topic
        self.group = group
        self.handler = handler
        self.timeout = timeout

    def publish(self, msg: Message[Any], error: BaseException) -> None:
        """Raises ProduceError when the broker does not acknowledge the record."""
        headers = [
            *msg.headers,
            *failure_headers(msg, group=self.group, handler=self.handler, error=error),
        ]
        self.producer.send_sync(
            self.topic, msg.raw_value, key=msg.key, headers=headers, timeout=self.timeout
        )

"""Dead-letter records: the original record, byte for byte, plus why and where it failed.

The DLQ record keeps the original key, value and headers unchanged (also when the value could
not be decoded) and appends these headers, each a UTF-8 string:

    kw.original.topic, kw.original.partition, kw.original.offset,
    kw.original.timestamp   milliseconds since the epoch, -1 when the record had none
    kw.group, kw.handler, kw.attempts
    kw.error.type           module-qualified class name, e.g. builtins.ValueError
    kw.error.message        at most MESSAGE_LIMIT bytes
    kw.error.traceback      the formatted traceback, at most TRACEBACK_LIMIT bytes (its tail)
    kw.failed_at            ISO 8601, UTC

It is published synchronously (acks=all): the source offset counts as finished only once the
broker has acknowledged the DLQ record.
"""

from __future__ import annotations

import time
import traceback
from datetime import UTC, datetime
from typing import Any

from kafkaworker.message import Message
from kafkaworker.producer import Producer
from kafkaworker.runtime.retrytopics import DUE_HEADER, Stage

TRACEBACK_LIMIT = 8 * 1024
MESSAGE_LIMIT = 4 * 1024
HEADER_PREFIX = "kw."
ATTEMPTS_HEADER = HEADER_PREFIX + "attempts"


def error_type(error: BaseException) -> str:
    cls = type(error)
    return f"{cls.__module__}.{cls.__qualname__}"


ORIGIN_HEADERS = tuple(
    HEADER_PREFIX + name
    for name in ("original.topic", "original.partition", "original.offset", "original.timestamp")
)
# Headers this module writes. They are removed before a record is written again (to a retry
# topic, or from a retry topic to the DLQ), so the user's own headers stay byte for byte.
OWN_HEADERS = frozenset(
    {
        *ORIGIN_HEADERS,
        *(
            HEADER_PREFIX + name
            for name in (
                "group",
                "handler",
                "attempts",
                "error.type",
                "error.message",
                "error.traceback",
                "failed_at",
            )
        ),
        DUE_HEADER,
    }
)


def user_headers(msg: Message[Any]) -> list[tuple[str, bytes | None]]:
    return [(name, value) for name, value in msg.headers if name not in OWN_HEADERS]


def origin_headers(msg: Message[Any]) -> list[tuple[str, bytes]]:
    """Where the message first came from: its own coordinates, or those a retry carried."""
    carried = [(name, msg.header(name)) for name in ORIGIN_HEADERS]
    if all(value is not None for _, value in carried):
        return carried  # type: ignore[return-value]
    stamp = msg.timestamp
    own = (
        msg.topic,
        str(msg.partition),
        str(msg.offset),
        str(int(stamp.timestamp() * 1000)) if stamp else "-1",
    )
    return [(name, value.encode()) for name, value in zip(ORIGIN_HEADERS, own, strict=True)]


def _error_headers(error: BaseException) -> list[tuple[str, bytes]]:
    message = str(error).encode()
    if len(message) > MESSAGE_LIMIT:  # a huge message must not make the record unwritable
        message = message[: MESSAGE_LIMIT - 3] + b"..."
    return [
        (HEADER_PREFIX + "error.type", error_type(error).encode()),
        (HEADER_PREFIX + "error.message", message),
    ]


def failure_headers(
    msg: Message[Any], *, group: str, handler: str, error: BaseException
) -> list[tuple[str, bytes]]:
    formatted = "".join(traceback.format_exception(error)).encode()
    if len(formatted) > TRACEBACK_LIMIT:
        # The tail holds the innermost frames and the message: the part worth keeping.
        formatted = b"...\n" + formatted[-(TRACEBACK_LIMIT - 4) :]
    return [
        *origin_headers(msg),
        (HEADER_PREFIX + "group", group.encode()),
        (HEADER_PREFIX + "handler", handler.encode()),
        (HEADER_PREFIX + "attempts", str(msg.attempt).encode()),
        *_error_headers(error),
        (HEADER_PREFIX + "error.traceback", formatted),
        (HEADER_PREFIX + "failed_at", datetime.now(UTC).isoformat().encode()),
    ]


class FailurePublisher:
    """Writes a handler's failed messages to its next retry topic or its DLQ, waiting for the
    broker's acknowledgement (acks=all) before the source offset may count as finished."""

    def __init__(
        self,
        producer: Producer,
        dlq: str | None,
        *,
        group: str,
        handler: str,
        timeout: float = 30.0,
    ) -> None:
        self.producer = producer
        self.topic = dlq
        self.group = group
        self.handler = handler
        self.timeout = timeout

    def publish(self, msg: Message[Any], error: BaseException) -> None:
        """Write the DLQ record; raises ProduceError when the broker does not acknowledge it."""
        assert self.topic is not None
        headers = [
            *user_headers(msg),
            *failure_headers(msg, group=self.group, handler=self.handler, error=error),
        ]
        self.producer.send_sync(
            self.topic, msg.raw_value, key=msg.key, headers=headers, timeout=self.timeout
        )

    def publish_retry(self, msg: Message[Any], error: BaseException, stage: Stage) -> None:
        """Write the message to a delayed retry topic, due `stage.delay` seconds from now."""
        due = int((time.time() + stage.delay) * 1000)
        headers = [
            *user_headers(msg),
            *origin_headers(msg),
            (HEADER_PREFIX + "attempts", str(msg.attempt).encode()),
            *_error_headers(error),
            (DUE_HEADER, str(due).encode()),
        ]
        self.producer.send_sync(
            stage.topic, msg.raw_value, key=msg.key, headers=headers, timeout=self.timeout
        )

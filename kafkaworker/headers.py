"""The kw.* headers: what the runtime writes on retry-topic and dead-letter records.

Each value is a UTF-8 string. A dead-letter record carries the original key, value and
headers byte for byte, plus:

    kw.original.topic, kw.original.partition, kw.original.offset
    kw.original.timestamp   milliseconds since the epoch, -1 when the record had none
    kw.group, kw.handler, kw.attempts
    kw.error.type           module-qualified class name, e.g. builtins.ValueError
    kw.error.message        at most 4 KiB
    kw.error.traceback      the formatted traceback, at most 8 KiB (its tail)
    kw.failed_at            ISO 8601, UTC

A delayed retry record carries the origin, kw.attempts, the error's type and message, and
kw.retry.due (milliseconds since the epoch). `kafkaworker dlq replay` adds kw.replayed_from.
"""

from __future__ import annotations

from typing import Protocol

PREFIX = "kw."
ORIGINAL_TOPIC = "kw.original.topic"
ORIGINAL_PARTITION = "kw.original.partition"
ORIGINAL_OFFSET = "kw.original.offset"
ORIGINAL_TIMESTAMP = "kw.original.timestamp"
GROUP = "kw.group"
HANDLER = "kw.handler"
ATTEMPTS = "kw.attempts"
ERROR_TYPE = "kw.error.type"
ERROR_MESSAGE = "kw.error.message"
ERROR_TRACEBACK = "kw.error.traceback"
FAILED_AT = "kw.failed_at"
RETRY_DUE = "kw.retry.due"
REPLAYED_FROM = "kw.replayed_from"

# Where a record first came from; a retry carries them forward to the DLQ.
ORIGIN = (ORIGINAL_TOPIC, ORIGINAL_PARTITION, ORIGINAL_OFFSET, ORIGINAL_TIMESTAMP)
# The kw.* headers each kind of record carries (runtime/failures/deadletter.py writes them),
# beside the original record's own headers.
DEAD_LETTER = (
    *ORIGIN,
    GROUP,
    HANDLER,
    ATTEMPTS,
    ERROR_TYPE,
    ERROR_MESSAGE,
    ERROR_TRACEBACK,
    FAILED_AT,
)
RETRY = (*ORIGIN, ATTEMPTS, ERROR_TYPE, ERROR_MESSAGE, RETRY_DUE)
# Written by the runtime, and removed before it writes a record again (to a retry topic, or
# from a retry topic to the DLQ), so the user's own headers stay byte for byte.
OWN = frozenset({*DEAD_LETTER, *RETRY})

# What each holds, for documents that describe the records (`kafkaworker asyncapi`).
MEANING = {
    ORIGINAL_TOPIC: "the topic the record was first consumed from",
    ORIGINAL_PARTITION: "its partition there",
    ORIGINAL_OFFSET: "its offset there",
    ORIGINAL_TIMESTAMP: "its timestamp, milliseconds since the epoch; -1 when it had none",
    GROUP: "the consumer group of the handler that gave up on it",
    HANDLER: "that handler's name",
    ATTEMPTS: "how many times the handler was called with it",
    ERROR_TYPE: "the last error's module-qualified class, e.g. builtins.ValueError",
    ERROR_MESSAGE: "the last error's message, at most 4 KiB",
    ERROR_TRACEBACK: "the last attempt's traceback, its last 8 KiB",
    FAILED_AT: "when it was given up on, ISO 8601 in UTC",
    RETRY_DUE: "when the retry is due, milliseconds since the epoch",
    REPLAYED_FROM: "the dead-letter record it was replayed from, topic[partition]@offset",
}


class Headered(Protocol):
    """A Message, or anything else that looks headers up the same way."""

    def header(self, name: str, default: bytes | None = None) -> bytes | None: ...


def int_header(msg: Headered, name: str) -> int | None:
    """A header holding a non-negative integer (kw.attempts, kw.retry.due); None when it is
    missing or not a number (a record someone else wrote)."""
    value = msg.header(name)
    return int(value) if value is not None and value.isdigit() else None

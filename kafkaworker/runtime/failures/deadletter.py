"""Failure records: what is written to retry topics and the DLQ for a failed message, with
the kw.* headers (kafkaworker.headers), byte for byte otherwise.

The executor writes them synchronously (acks=all): the source offset counts as finished only
once the broker has acknowledged the record.
"""

from __future__ import annotations

import asyncio
import os
import traceback
from datetime import UTC, datetime
from typing import Any, NamedTuple

from kafkaworker import headers
from kafkaworker.message import Message
from kafkaworker.runtime.clock import SYSTEM_CLOCK, Clock
from kafkaworker.runtime.failures.retrytopics import Stage

TRACEBACK_LIMIT = 8 * 1024
MESSAGE_LIMIT = 4 * 1024

# The call machinery above a handler: the executors (threads, the event loop) and asyncio.
_FRAMEWORK = tuple(
    os.path.dirname(module.__file__) + os.sep
    for module in (headers, asyncio)
    if module.__file__ is not None
)


def error_type(error: BaseException) -> str:
    cls = type(error)
    return f"{cls.__module__}.{cls.__qualname__}"


def user_headers(msg: Message[Any]) -> list[tuple[str, bytes | None]]:
    return [(name, value) for name, value in msg.headers if name not in headers.OWN]


def origin_headers(msg: Message[Any]) -> list[tuple[str, bytes]]:
    """Where the message first came from: its own coordinates, or those a retry carried."""
    carried = [(name, msg.header(name)) for name in headers.ORIGIN]
    if all(value is not None for _, value in carried):
        return carried  # type: ignore[return-value]
    stamp = msg.timestamp
    own = (
        msg.topic,
        str(msg.partition),
        str(msg.offset),
        str(int(stamp.timestamp() * 1000)) if stamp else "-1",
    )
    return [(name, value.encode()) for name, value in zip(headers.ORIGIN, own, strict=True)]


def _error_headers(error: BaseException) -> list[tuple[str, bytes]]:
    message = str(error).encode()
    if len(message) > MESSAGE_LIMIT:  # a huge message must not make the record unwritable
        message = message[: MESSAGE_LIMIT - 3] + b"..."
    return [
        (headers.ERROR_TYPE, error_type(error).encode()),
        (headers.ERROR_MESSAGE, message),
    ]


def format_traceback(error: BaseException) -> str:
    """The failed attempt's traceback as the user would want it in a DLQ header: the frames of
    kafkaworker's own call machinery above the handler are left out (a dozen lines of executor
    and failure-policy frames, the same in every record), for the error and each exception
    chained to it. A traceback with no frame outside kafkaworker (a payload that does not
    decode, say) is kept whole: its frames are where the error is."""
    described = traceback.TracebackException.from_exception(error)
    seen: set[int] = set()
    pending = [described]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        frames = list(current.stack)
        first_own = next((i for i, f in enumerate(frames) if not _framework(f.filename)), None)
        if first_own:
            current.stack = traceback.StackSummary.from_list(frames[first_own:])
        pending += [c for c in (current.__cause__, current.__context__) if c is not None]
    return "".join(described.format())


def _framework(filename: str) -> bool:
    return filename.startswith(_FRAMEWORK)


def failure_headers(
    msg: Message[Any], *, group: str, handler: str, error: BaseException
) -> list[tuple[str, bytes]]:
    formatted = format_traceback(error).encode()
    if len(formatted) > TRACEBACK_LIMIT:
        # The tail holds the innermost frames and the message: the part worth keeping.
        formatted = b"...\n" + formatted[-(TRACEBACK_LIMIT - 4) :]
    return [
        *origin_headers(msg),
        (headers.GROUP, group.encode()),
        (headers.HANDLER, handler.encode()),
        (headers.ATTEMPTS, str(msg.attempt).encode()),
        *_error_headers(error),
        (headers.ERROR_TRACEBACK, formatted),
        (headers.FAILED_AT, datetime.now(UTC).isoformat().encode()),
    ]


class FailedRecord(NamedTuple):
    """A record to write for a failed message: the original key and value, new headers."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]


class FailureRecords:
    """Builds a handler's retry-topic and DLQ records; the executor writes them and waits for
    the broker's acknowledgement (acks=all) before the source offset may count as finished."""

    def __init__(
        self, dlq: str | None, *, group: str, handler: str, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self.dlq = dlq
        self.group = group
        self.handler = handler
        self._clock = clock  # due times of retry records

    def dead_letter(self, msg: Message[Any], error: BaseException) -> FailedRecord:
        assert self.dlq is not None
        written = [
            *user_headers(msg),
            *failure_headers(msg, group=self.group, handler=self.handler, error=error),
        ]
        return FailedRecord(self.dlq, msg.key, msg.raw_value, written)

    def retry(self, msg: Message[Any], error: BaseException, stage: Stage) -> FailedRecord:
        """The record for a delayed retry topic, due `stage.delay` seconds from now."""
        due = int((self._clock.time() + stage.delay) * 1000)
        written = [
            *user_headers(msg),
            *origin_headers(msg),
            (headers.ATTEMPTS, str(msg.attempt).encode()),
            *_error_headers(error),
            (headers.RETRY_DUE, str(due).encode()),
        ]
        return FailedRecord(stage.topic, msg.key, msg.raw_value, written)

"""A queue-mode (share group) test app that records every delivery it sees, for the queue-mode
tests to count.

Configured by environment: QUEUE_TOPIC, QUEUE_FILE, QUEUE_GROUP (the share group),
QUEUE_SLEEP (seconds per record), QUEUE_CONCURRENCY, QUEUE_ASYNC=1 (an `async def` handler),
QUEUE_DLQ, QUEUE_RETRIES, QUEUE_STARTS (a file of started records), and failures by value:
QUEUE_FAIL_UNTIL="v:n,..." (value v fails its first n deliveries, then succeeds),
QUEUE_FAIL_ALWAYS="v,..." (always fails, retryably), QUEUE_FATAL="v,..." (DeadLetter).

Each delivery appends one line "pid value partition offset attempt outcome started finished"
(outcome "ok" or "fail") with one write on an O_APPEND descriptor, so lines from several
processes never interleave.
"""

from __future__ import annotations

import asyncio
import os
import time

from kafkaworker import App, Message
from kafkaworker.errors import DeadLetter

app = App("queue-recorder")
_fd = os.open(os.environ.get("QUEUE_FILE", "/dev/null"), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
_STARTS = os.environ.get("QUEUE_STARTS")
_starts_fd = os.open(_STARTS, os.O_WRONLY | os.O_APPEND | os.O_CREAT) if _STARTS else None
_SLEEP = float(os.environ.get("QUEUE_SLEEP", "0"))
_pid = os.getpid()
_FAIL_UNTIL = {
    int(v): int(n)
    for v, n in (p.split(":") for p in os.environ.get("QUEUE_FAIL_UNTIL", "").split(",") if p)
}
_FAIL_ALWAYS = {int(v) for v in os.environ.get("QUEUE_FAIL_ALWAYS", "").split(",") if v}
_FATAL = {int(v) for v in os.environ.get("QUEUE_FATAL", "").split(",") if v}


class FlakyError(Exception):
    """A retryable failure the test asked for."""


def _started(msg: Message[bytes]) -> float:
    if _starts_fd is not None:
        os.write(_starts_fd, f"{_pid} {int(msg.value)} {msg.offset}\n".encode())
    return time.monotonic()


def _line(msg: Message[bytes], outcome: str, started: float) -> None:
    line = (
        f"{_pid} {int(msg.value)} {msg.partition} {msg.offset} {msg.attempt} {outcome} "
        f"{started:.6f} {time.monotonic():.6f}\n"
    )
    os.write(_fd, line.encode())


def _check(msg: Message[bytes], started: float) -> None:
    value = int(msg.value)
    error: Exception | None = None
    if value in _FATAL:
        error = DeadLetter(f"value {value} is poison")
    elif value in _FAIL_ALWAYS or msg.attempt <= _FAIL_UNTIL.get(value, 0):
        error = FlakyError(f"value {value} fails at delivery {msg.attempt}")
    if error is not None:
        _line(msg, "fail", started)
        raise error


def record(msg: Message[bytes]) -> None:
    started = _started(msg)
    _check(msg, started)
    if _SLEEP:
        time.sleep(_SLEEP)
    _line(msg, "ok", started)


async def record_async(msg: Message[bytes]) -> None:
    started = _started(msg)
    _check(msg, started)
    if _SLEEP:
        await asyncio.sleep(_SLEEP)
    _line(msg, "ok", started)


app.handler(
    os.environ.get("QUEUE_TOPIC", "jobs"),
    mode="queue",
    group=os.environ.get("QUEUE_GROUP"),
    concurrency=int(os.environ.get("QUEUE_CONCURRENCY", "4")),
    retries=int(os.environ.get("QUEUE_RETRIES", "0")),
    dlq=os.environ.get("QUEUE_DLQ") or None,
    codec="raw",
    name="work",
)(record_async if os.environ.get("QUEUE_ASYNC") == "1" else record)

"""A test app that records every message it finishes, for the fault tests to count.

Configured by environment: RECORDER_TOPIC, RECORDER_FILE, RECORDER_SLEEP (seconds per message),
RECORDER_ORDERING, RECORDER_CONCURRENCY, RECORDER_GROUP, RECORDER_STARTS (a file of started),
RECORDER_ASYNC=1 (the handler is an `async def` that awaits asyncio.sleep).
Each finished message appends one line, "pid partition offset key started finished", with one
write on an O_APPEND descriptor, so lines from several processes never interleave.
"""

from __future__ import annotations

import asyncio
import os
import time

from kafkaworker import App, Message

app = App("recorder")
_FILE = os.environ.get("RECORDER_FILE", "/dev/null")
_SLEEP = float(os.environ.get("RECORDER_SLEEP", "0"))
_fd = os.open(_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
# Optional: one line "pid partition offset" when a handler starts, to see what is in flight.
_STARTS = os.environ.get("RECORDER_STARTS")
_starts_fd = os.open(_STARTS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) if _STARTS else None
_pid = os.getpid()


def _started(msg: Message[bytes]) -> float:
    if _starts_fd is not None:
        os.write(_starts_fd, f"{_pid} {msg.partition} {msg.offset}\n".encode())
    return time.monotonic()


def _finished(msg: Message[bytes], started: float) -> None:
    key = (msg.key or b"-").decode()
    line = f"{_pid} {msg.partition} {msg.offset} {key} {started:.6f} {time.monotonic():.6f}\n"
    os.write(_fd, line.encode())


def record(msg: Message[bytes]) -> None:
    started = _started(msg)
    if _SLEEP:
        time.sleep(_SLEEP)
    _finished(msg, started)


async def record_async(msg: Message[bytes]) -> None:
    started = _started(msg)
    if _SLEEP:
        await asyncio.sleep(_SLEEP)
    _finished(msg, started)


app.handler(
    os.environ.get("RECORDER_TOPIC", "recorder"),
    group=os.environ.get("RECORDER_GROUP"),
    ordering=os.environ.get("RECORDER_ORDERING", "partition"),  # type: ignore[arg-type]
    concurrency=int(os.environ.get("RECORDER_CONCURRENCY", "4")),
    codec="raw",
    name="record",
)(record_async if os.environ.get("RECORDER_ASYNC") == "1" else record)

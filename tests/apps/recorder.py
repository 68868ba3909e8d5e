"""A test app that records every message it finishes, for the fault tests to count.

Configured by environment: RECORDER_TOPIC, RECORDER_FILE, RECORDER_SLEEP (seconds per message),
RECORDER_ORDERING, RECORDER_CONCURRENCY, RECORDER_GROUP, RECORDER_STARTS (a file of started),
RECORDER_ASYNC=1 (the handler is an `async def` that awaits asyncio.sleep), RECORDER_OUTPUT (a
topic: each message's value is produced there, acks=all, before the message counts as finished),
RECORDER_DLQ with RECORDER_FAIL_EVERY=N (a message whose value is a multiple of N fails, and is
dead-lettered at once: not recorded), RECORDER_HOLD_KEY with RECORDER_HOLD_FILE (messages of
that key wait until the file exists: a key that holds its partition's position back while the
others finish), RECORDER_SLOW_KEYS (comma-separated) with RECORDER_SLOW_SLEEP (those keys'
messages take longer).
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
_OUTPUT = os.environ.get("RECORDER_OUTPUT") or None
_DLQ = os.environ.get("RECORDER_DLQ") or None
_FAIL_EVERY = int(os.environ.get("RECORDER_FAIL_EVERY", "0"))
_HOLD_KEY = (os.environ.get("RECORDER_HOLD_KEY") or "").encode() or None
_HOLD_FILE = os.environ.get("RECORDER_HOLD_FILE", "")
_SLOW_KEYS = {k.encode() for k in (os.environ.get("RECORDER_SLOW_KEYS") or "").split(",") if k}
_SLOW_SLEEP = float(os.environ.get("RECORDER_SLOW_SLEEP", "0"))


def _sleep_for(msg: Message[bytes]) -> float:
    if _HOLD_KEY is not None and msg.key == _HOLD_KEY:
        while not os.path.exists(_HOLD_FILE):
            time.sleep(0.05)
    if msg.key in _SLOW_KEYS:
        return _SLOW_SLEEP
    return _SLEEP


class PoisonError(Exception):
    """A message the test wants dead-lettered."""


def _check(msg: Message[bytes]) -> None:
    if _FAIL_EVERY and int(msg.value) % _FAIL_EVERY == 0:
        raise PoisonError(f"value {int(msg.value)} is a multiple of {_FAIL_EVERY}")


def _started(msg: Message[bytes]) -> float:
    if _starts_fd is not None:
        os.write(_starts_fd, f"{_pid} {msg.partition} {msg.offset}\n".encode())
    return time.monotonic()


def _finished(msg: Message[bytes], started: float) -> None:
    key = (msg.key or b"-").decode()
    line = f"{_pid} {msg.partition} {msg.offset} {key} {started:.6f} {time.monotonic():.6f}\n"
    os.write(_fd, line.encode())


def record(msg: Message[bytes]) -> bytes | None:
    started = _started(msg)
    _check(msg)
    if seconds := _sleep_for(msg):
        time.sleep(seconds)
    # Recorded when the handler is done; with an output, the message is finished only once
    # the output is acknowledged (so a recorded message may be delivered again: counted as
    # a duplicate, never as lost).
    _finished(msg, started)
    return msg.value if _OUTPUT else None


async def record_async(msg: Message[bytes]) -> bytes | None:
    started = _started(msg)
    _check(msg)
    if _SLEEP:
        await asyncio.sleep(_SLEEP)
    _finished(msg, started)
    return msg.value if _OUTPUT else None


app.handler(
    os.environ.get("RECORDER_TOPIC", "recorder"),
    group=os.environ.get("RECORDER_GROUP"),
    ordering=os.environ.get("RECORDER_ORDERING", "partition"),  # type: ignore[arg-type]
    concurrency=int(os.environ.get("RECORDER_CONCURRENCY", "4")),
    codec="raw",
    name="record",
    output=_OUTPUT,
    dlq=_DLQ,
)(record_async if os.environ.get("RECORDER_ASYNC") == "1" else record)

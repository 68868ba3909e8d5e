"""RecentFailures: the last failed handler calls, for the dashboard (bounded memory).

Written on the failure path only (Attempts.failure_sink): a message that succeeds never
touches it. Each entry is plain data, formatted when the failure happens, so that no
exception, traceback frame or record is kept alive by the buffer.
"""

from __future__ import annotations

import os
import threading
import time
import traceback
from collections import deque
from typing import Any

from kafkaworker.message import Message
from kafkaworker.runtime.execute.outputs import error_type
from kafkaworker.runtime.failures.policy import Decision
from kafkaworker.tracing import current_ids

KEEP = 100
# Bounds per entry: a failure flood with large keys or deep stacks stays a few MB at most.
_TEXT_MAX = 500
_TRACEBACK_MAX = 8_000
_HEADERS_MAX = 30


class RecentFailures:
    """The last `keep` failed attempts of one process, newest last; thread-safe."""

    def __init__(self, keep: int = KEEP) -> None:
        self._entries: deque[dict[str, Any]] = deque(maxlen=keep)
        self._lock = threading.Lock()
        self.total = 0  # failed attempts seen since start (the buffer keeps the last `keep`)

    def sink(self, handler: str, dlq: str | None) -> Any:
        """The callable a handler's Attempts calls on each failure."""

        def add(msg: Message[Any], error: BaseException, decision: Decision) -> None:
            self.add(handler, dlq, msg, error, decision)

        return add

    def add(
        self,
        handler: str,
        dlq: str | None,
        msg: Message[Any],
        error: BaseException,
        decision: Decision,
    ) -> None:
        lines = traceback.format_exception(type(error), error, error.__traceback__)
        # Called in the failed message's process span (tracing on): the trace to look it up by.
        ids = current_ids()
        entry = {
            "time": time.time(),
            "pid": os.getpid(),
            "handler": handler,
            "topic": msg.topic,
            "partition": msg.partition,
            "offset": msg.offset,
            "attempt": msg.attempt,
            "key": _text(msg.key),
            "error_type": error_type(error),
            "error": _clip(str(error)),
            "decision": decision.action.name.lower(),
            "fatal": decision.fatal,
            "traceback": _clip("".join(lines), _TRACEBACK_MAX),
            "headers": [[name, _text(value)] for name, value in msg.headers[:_HEADERS_MAX]],
            "dlq": decision.topic if decision.topic else dlq,
            "trace_id": ids[0] if ids is not None else None,
        }
        with self._lock:
            self._entries.append(entry)
            self.total += 1

    def entries(self) -> list[dict[str, Any]]:
        """Oldest first."""
        with self._lock:
            return list(self._entries)


def _text(value: bytes | None) -> str | None:
    if value is None:
        return None
    return _clip(value.decode("utf-8", errors="replace"))


def _clip(text: str, limit: int = _TEXT_MAX) -> str:
    return text if len(text) <= limit else text[:limit] + f"... ({len(text) - limit} more)"

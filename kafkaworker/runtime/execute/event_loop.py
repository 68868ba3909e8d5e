"""The process's event loop, on a thread of its own, for `async def` handlers and hooks.

One loop per process, not one per handler: what an async startup hook creates (an asyncpg
pool, an httpx.AsyncClient) belongs to the loop it was created on, and every async handler
must be able to use it. The price is that a handler that blocks the loop (time.sleep, a sync
HTTP call) stalls every async handler, so a watchdog thread looks at the loop: when it has
not turned for BLOCKED_AFTER seconds, it reads the loop thread's stack, names the handler
whose frame is on it and the blocking line, and logs that once per handler.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
import traceback
from collections.abc import Callable, Coroutine
from types import CodeType
from typing import Any, TypeVar

import structlog

from kafkaworker.errors import StartupError

log = structlog.get_logger("kafkaworker.loop")

T = TypeVar("T")

# The loop counts as blocked when a callback has run this long without returning to it.
# (asyncio's own debug mode calls a callback slow from 0.1 s; this is for the worst.)
BLOCKED_AFTER = 0.2
_TICK = 0.05


def new_event_loop(kind: str = "asyncio") -> asyncio.AbstractEventLoop:
    """asyncio's loop, or uvloop's (settings.event_loop)."""
    if kind == "asyncio":
        return asyncio.new_event_loop()
    try:
        import uvloop  # type: ignore[import-not-found,unused-ignore]  # noqa: PLC0415 - optional
    except ImportError:
        raise StartupError(
            "event_loop is 'uvloop' but uvloop is not installed: pip install uvloop, or set "
            "event_loop: asyncio"
        ) from None
    return uvloop.new_event_loop()  # type: ignore[no-any-return,unused-ignore]


class EventLoopThread:
    """Owns the loop, its thread and the watchdog thread, and stops them (`close()`)."""

    def __init__(self, *, name: str = "kw-loop", kind: str = "asyncio") -> None:
        self.loop = new_event_loop(kind)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._watchdog = threading.Thread(target=self._watch, name=f"{name}-watchdog", daemon=True)
        self._closed = threading.Event()
        self._turned = time.monotonic()  # when the loop last ran its tick
        # Code objects of async handlers -> the handler's name (who blocked the loop).
        self._handlers: dict[CodeType, str] = {}
        self._reported: set[str] = set()

    def start(self) -> EventLoopThread:
        self._thread.start()
        self._watchdog.start()
        return self

    def watch(self, handler: str, func: Callable[..., Any]) -> None:
        """Name `handler` when the loop is found blocked inside `func`."""
        call = getattr(func, "__call__", None)  # noqa: B004 - a callable object's method
        for target in (func, call, getattr(func, "func", None)):
            code = getattr(target, "__code__", None)
            if isinstance(code, CodeType):
                self._handlers[code] = handler

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run a coroutine on the loop from another thread and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call_soon(self, callback: Callable[[], Any]) -> None:
        """Run `callback` on the loop (from any thread)."""
        self.loop.call_soon_threadsafe(callback)

    def close(self, timeout: float = 5.0) -> None:
        """Cancel what still runs, stop the loop, join the threads."""
        if self._closed.is_set():
            return
        self._closed.set()
        if self._thread.is_alive():
            try:
                self.run(_cancel_all(), timeout)
            except Exception:
                log.warning("tasks did not finish cancelling", exc_info=True)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout)
        self._watchdog.join(timeout)
        if not self._thread.is_alive():
            self.loop.close()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._tick)
        self.loop.run_forever()

    def _tick(self) -> None:
        self._turned = time.monotonic()
        if not self._closed.is_set():
            self.loop.call_later(_TICK, self._tick)

    def _watch(self) -> None:
        while not self._closed.wait(_TICK):
            blocked = time.monotonic() - self._turned
            if blocked >= BLOCKED_AFTER:
                self._report_blocked(blocked)

    def _report_blocked(self, blocked: float) -> None:
        ident = self._thread.ident
        frame = sys._current_frames().get(ident) if ident is not None else None
        handler, where = None, None
        while frame is not None:
            name = self._handlers.get(frame.f_code)
            if name is not None:
                handler = name
                break
            frame = frame.f_back
        if handler is None or handler in self._reported:
            return
        self._reported.add(handler)
        top = sys._current_frames().get(ident) if ident is not None else None
        if top is not None:
            last = traceback.extract_stack(top, limit=1)[-1]
            where = f"{last.filename}:{last.lineno} ({last.line})"
        log.error(
            "an async handler is blocking the event loop: every async handler waits until it "
            "returns. Await instead (asyncio.sleep, an async client), or run blocking code "
            "with `await asyncio.to_thread(...)`",
            handler=handler,
            blocked_for=round(blocked, 2),
            at=where,
        )


def cancelling() -> bool:
    """Whether the running task is being cancelled (a revoke outlived revoke_timeout, or the
    executor is closing). A CancelledError raised while it is not was raised by the handler
    (it awaited a future that something else cancelled): an error like any other, for the
    failure policy, not a reason to give the message up."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def _cancel_all() -> None:
    current = asyncio.current_task()
    tasks = [t for t in asyncio.all_tasks() if t is not current]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)

"""Clocks. Everything in the runtime that reads the time or waits for it takes one, so that
tests move time by hand instead of sleeping (arroyo's clock, whose sleep a mocked clock turns
into advancing time, is the model).

- Clock: the real one (SYSTEM_CLOCK).
- ManualClock: frozen; moves only when told (`advance`) or when something waits on it: a
  wait advances it by the time waited, at once. For unit tests of decisions (backpressure,
  delayed retries, the breaker) and of the poller turn by turn.
- VirtualClock: real time plus every wait skipped so far: the TestClient's, where a 30 s
  backoff advances the clock instead of waiting while real work (threads, a shutdown's wait
  for in-flight handlers) still takes the time it takes.

A wait is a condition with a predicate (a revoke ends it), so the executors wait through the
clock with no branch of their own for virtual time. A stall waits for real under every clock:
it waits for a person (nowhere to put the message until the handler or the settings are
fixed), and skipping its wait would run the handler again and again.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
_sleep = time.sleep


# What ends a wait early (it is asked again whenever the wait is woken), and the event that
# wakes a wait on an event loop (asked for again each time: it may be replaced once set).
Until = Callable[[], bool]
Woken = Callable[[], asyncio.Event]


class Clock:
    """The system's clock. ManualClock and VirtualClock stand in for it in tests."""

    # Seconds, for intervals; seconds since the epoch, for due times written into records.
    # The C functions themselves: the executors read the clock between stretches of calls.
    monotonic = staticmethod(time.monotonic)
    time = staticmethod(time.time)

    def sleep(self, seconds: float) -> None:
        """Let `seconds` pass."""
        _sleep(seconds)

    def wait(
        self, cond: threading.Condition, until: Until, seconds: float, *, stall: bool = False
    ) -> bool:
        """With `cond` held: wait until `until()` holds or `seconds` have passed; whether it
        holds. Whoever makes it hold notifies `cond`."""
        return cond.wait_for(until, seconds)

    async def wait_async(
        self, woken: Woken, until: Until, seconds: float, *, stall: bool = False
    ) -> bool:
        """On an event loop: wait until `until()` holds or `seconds` have passed; whether it
        holds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while not until():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            try:
                await asyncio.wait_for(woken().wait(), remaining)
            except TimeoutError:
                return until()
        return True

    def get(self, items: queue.SimpleQueue[T], seconds: float) -> T:
        """The next item, waiting up to `seconds` for it; queue.Empty when none came."""
        return items.get(timeout=seconds)


SYSTEM_CLOCK = Clock()


class ManualClock(Clock):
    """A frozen clock that moves only when told to (`advance`, from any thread) or waited on:
    a wait (but a stall's) advances it by the time waited, at once."""

    def __init__(self, monotonic: float = 1000.0, wall: float = 1_700_000_000.0) -> None:
        self._lock = threading.Lock()
        self._monotonic = monotonic
        self._wall = wall

    def monotonic(self) -> float:
        return self._monotonic

    def time(self) -> float:
        return self._wall

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._monotonic += seconds
            self._wall += seconds

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)

    def wait(
        self, cond: threading.Condition, until: Until, seconds: float, *, stall: bool = False
    ) -> bool:
        if stall:
            return super().wait(cond, until, seconds)
        if not until():
            self.advance(seconds)
        return until()

    async def wait_async(
        self, woken: Woken, until: Until, seconds: float, *, stall: bool = False
    ) -> bool:
        if stall:
            return await super().wait_async(woken, until, seconds)
        if not until():
            self.advance(seconds)
        return until()

    def get(self, items: queue.SimpleQueue[T], seconds: float) -> T:
        try:
            return items.get_nowait()
        except queue.Empty:
            self.advance(seconds)
            raise


class VirtualClock(ManualClock):
    """Real time plus the waits skipped so far: `advance` (and every wait on a condition but a
    stall's: a backoff) moves it ahead at once, and it runs on with real time meanwhile. A
    wait for reports from threads (`get`) takes the real time it takes: the runtime's threads
    run in real time."""

    get = Clock.get

    def __init__(self) -> None:
        super().__init__(0.0, 0.0)  # the time skipped so far

    def monotonic(self) -> float:
        return time.monotonic() + self._monotonic

    def time(self) -> float:
        return time.time() + self._wall

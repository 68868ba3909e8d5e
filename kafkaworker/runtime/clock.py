"""Clocks. Time-based decisions (backpressure, delayed retries, the breaker, commits) take one,
so that tests move time by hand instead of sleeping."""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds, for intervals."""
        ...

    def time(self) -> float:
        """Seconds since the epoch, for due times written into records."""
        ...


class SystemClock:
    monotonic = staticmethod(time.monotonic)
    time = staticmethod(time.time)


SYSTEM_CLOCK = SystemClock()


class ManualClock:
    """A clock that moves only when told to (`advance`), from any thread. Given to the
    executors too, it is virtual time: a retry's backoff advances it instead of waiting."""

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

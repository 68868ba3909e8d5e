"""Backoff: how long to wait before a handler runs a failed message again. Pure."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from kafkaworker.errors import ConfigError

Jitter = Literal["full", "equal", "none"]
_JITTERS = ("full", "equal", "none")


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff: `initial * multiplier ** (retry - 1)`, capped at `max`, jittered.

    Full jitter (a uniform draw in [0, delay]) is the default because it spreads a crowd of
    workers that failed together best (AWS Architecture Blog, "Exponential Backoff And Jitter").
    """

    initial: float = 0.5
    multiplier: float = 2.0
    max: float = 30.0
    jitter: Jitter = "full"

    def __post_init__(self) -> None:
        if not self.initial >= 0:
            raise ConfigError(f"Backoff initial={self.initial!r}: must be >= 0 seconds")
        if not self.multiplier >= 1:
            raise ConfigError(f"Backoff multiplier={self.multiplier!r}: must be >= 1")
        if not self.max >= self.initial:
            raise ConfigError(f"Backoff max={self.max!r}: must be >= initial ({self.initial})")
        if self.jitter not in _JITTERS:
            raise ConfigError(f"Backoff jitter={self.jitter!r}: allowed are {', '.join(_JITTERS)}")

    def ceiling(self, retry: int) -> float:
        """The un-jittered delay before re-attempt number `retry` (1-based)."""
        exponent = max(0, retry - 1)
        # Cap the exponent: 2.0 ** 2000 overflows, and the cap is reached long before anyway.
        return min(self.max, self.initial * self.multiplier ** min(exponent, 64))

    def delay(self, retry: int, rng: random.Random | None = None) -> float:
        ceiling = self.ceiling(retry)
        draw = (rng or random).random()
        if self.jitter == "full":
            return ceiling * draw
        if self.jitter == "equal":
            return ceiling / 2 + ceiling / 2 * draw
        return ceiling

"""CircuitBreaker: stop dead-lettering everything when a bad deploy fails every message.

Pure: the poll thread feeds it outcomes and the clock; workers only read `open`.
When more than `threshold` of the last `window` finished messages went to the DLQ (and at
least `min_messages` were seen), the breaker opens: the handler's partitions are paused and
messages that would be dead-lettered wait instead. After `cooldown` seconds it closes with
an empty window, so it needs fresh evidence to open again; the waiting messages then run
their handler again.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable
from typing import Literal


class CircuitBreaker:
    def __init__(
        self,
        *,
        threshold: float,
        window: int,
        min_messages: int,
        cooldown: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = threshold
        self.min_messages = min_messages
        self.cooldown = cooldown
        self._clock = clock
        self._outcomes: deque[bool] = deque(maxlen=window)
        self._dead_lettered = 0
        self._opened_at = 0.0
        self.open = False
        # Opened by an operator (the dashboard): stays open until an operator closes it.
        self.held = False

    def record(self, dead_lettered: bool, count: int = 1) -> None:
        """`count` finished messages with the same outcome (workers report runs)."""
        outcomes = self._outcomes
        window = outcomes.maxlen or 0
        # The oldest outcomes leave the window as these come in.
        leaving = len(outcomes) + count - window
        if leaving >= len(outcomes):
            self._dead_lettered = 0
        elif leaving > 0:
            self._dead_lettered -= sum(itertools.islice(outcomes, leaving))
        kept = min(count, window)
        outcomes.extend(itertools.repeat(dead_lettered, kept))
        self._dead_lettered += dead_lettered * kept

    @property
    def share(self) -> float:
        return self._dead_lettered / len(self._outcomes) if self._outcomes else 0.0

    def closes_in(self) -> float:
        """Seconds until an open breaker closes (at the next update() from then on); 0 when
        it is closed."""
        if not self.open:
            return 0.0
        return max(0.0, self._opened_at + self.cooldown - self._clock())

    def force(self, open_: bool) -> Literal["opened", "closed"] | None:
        """An operator's decision: open (held until closed by an operator) or close now
        (with an empty window, as after a cooldown); the transition, if any."""
        was_open = self.open
        self.held = open_
        if open_:
            if not was_open:
                self.open = True
                self._opened_at = self._clock()
                return "opened"
            return None
        self.open = False
        self._outcomes.clear()
        self._dead_lettered = 0
        return "closed" if was_open else None

    def update(self) -> Literal["opened", "closed"] | None:
        """Open or close as the evidence and the clock say; return the transition, if any."""
        if self.held:
            return None
        if self.open:
            if self._clock() - self._opened_at >= self.cooldown:
                self.open = False
                self._outcomes.clear()
                self._dead_lettered = 0
                return "closed"
            return None
        if len(self._outcomes) >= self.min_messages and self.share > self.threshold:
            self.open = True
            self._opened_at = self._clock()
            return "opened"
        return None

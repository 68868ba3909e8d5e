"""Delayed retry topics: names and stages. Pure: no Kafka, no threads.

`retry_topics=[5, 60]` on a handler of "orders" adds the stages "orders.retry.5s" and
"orders.retry.60s". A message that fails on "orders" (after its in-place retries) is
re-published to the first stage with a due time; failing there, to the next; after the last,
to the DLQ. The source partition is not held up meanwhile, which is the point, and also the
price: a retried message is handled after messages that came after it (ordering is given up
for retried messages).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


def stage_name(topic: str, delay: float) -> str:
    return f"{topic}.retry.{delay:g}s"


@dataclass(frozen=True)
class Stage:
    source: str  # the handler's own topic this stage retries
    topic: str
    delay: float


class RetryRoutes:
    """Which retry topic comes after a given topic, for one handler."""

    def __init__(self, topics: Sequence[str], delays: Sequence[float]) -> None:
        self.delays = tuple(delays)
        self._next: dict[str, Stage] = {}
        self.stages: list[Stage] = []
        for source in topics:
            previous = source
            for delay in self.delays:
                stage = Stage(source, stage_name(source, delay), delay)
                self.stages.append(stage)
                self._next[previous] = stage
                previous = stage.topic
        self.retry_topics = frozenset(stage.topic for stage in self.stages)

    def next_stage(self, topic: str) -> Stage | None:
        """Where a message failing on `topic` goes next; None after the last stage."""
        return self._next.get(topic)

"""Delayed retry topics, on the poll side: records fetched before they are due are held.

A record of a retry topic whose kw.retry.due lies ahead is not dispatched: it is held in fetch
order with its partition (which the poll thread keeps paused) and released once due, with the
held records before it. Its offset is tracked meanwhile, so nothing is committed past it. The
poll thread never sleeps for a due time. Pure: the clock says what is due.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING

from kafkaworker import headers
from kafkaworker.headers import int_header
from kafkaworker.runtime.clock import SYSTEM_CLOCK, Clock
from kafkaworker.runtime.handoff import Dispatched, Run

if TYPE_CHECKING:
    from kafkaworker.runtime.poll.partitions import PartitionState


class DelayedRetries:
    def __init__(self, retry_topics: Iterable[str], *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.topics = frozenset(retry_topics)
        self._clock = clock
        self._held: dict[PartitionState, deque[Dispatched]] = {}

    def __bool__(self) -> bool:
        """Whether anything is held."""
        return bool(self._held)

    def holds(self, state: PartitionState) -> bool:
        """Whether the partition holds records (it stays paused until none is left)."""
        return state in self._held

    def admit(self, state: PartitionState, messages: list[Dispatched]) -> list[Dispatched]:
        """Of a run fetched from a retry topic: those to dispatch now. The rest are held, each
        behind the held ones before it (those are due first)."""
        now_ms = self._clock.time() * 1000
        held = self._held.get(state)
        ready: list[Dispatched] = []
        for msg in messages:
            attempts = int_header(msg, headers.ATTEMPTS)
            if attempts is not None:
                msg.attempt = attempts + 1  # the attempts before it was retried later, and this
            if held is None and _due_ms(msg) <= now_ms:
                ready.append(msg)
            else:
                if held is None:
                    held = self._held[state] = deque()
                held.append(msg)
        return ready

    def due(self) -> list[Run]:
        """Release the held records that are due, in order, per partition."""
        now_ms = self._clock.time() * 1000
        runs: list[Run] = []
        for state, held in list(self._held.items()):
            ready: list[Dispatched] = []
            while held and _due_ms(held[0]) <= now_ms:
                ready.append(held.popleft())
            if ready:
                runs.append((state.lease, ready))
            if not held:
                del self._held[state]
        return runs

    def drop(self, state: PartitionState) -> None:
        """Never started: the partition's next owner fetches them again."""
        self._held.pop(state, None)


def _due_ms(msg: Dispatched) -> int:
    return int_header(msg, headers.RETRY_DUE) or 0

"""OffsetTracker: which offset of a partition may be committed. Pure: no Kafka, no threads.

Kafka commits a position, not a set: committing N says "every offset below N is done". With
parallel handlers, offsets finish out of order, so the committable position is the lowest
offset still unfinished (or one past the last offset seen when everything is finished).
Offsets need not be contiguous (compaction and transaction markers leave gaps), so the tracker
remembers the offsets it was given rather than assuming offset + 1.
"""

from __future__ import annotations

from collections import deque


class PartitionOffsets:
    """In-flight offsets of one partition, in the order they were fetched (ascending)."""

    __slots__ = ("_done", "_outstanding", "committable")

    def __init__(self) -> None:
        self._outstanding: deque[int] = deque()
        self._done: set[int] = set()
        # The position to commit: every offset below it is finished. None until one finishes.
        self.committable: int | None = None

    def __len__(self) -> int:
        """Offsets dispatched and not yet committable: the partition's outstanding work."""
        return len(self._outstanding)

    def add(self, offset: int) -> None:
        """Record a fetched offset (above any offset added before)."""
        self._outstanding.append(offset)

    def finish(self, offset: int) -> None:
        self._done.add(offset)

    def advance(self) -> int | None:
        """Drop the finished prefix; return the new committable position if it moved."""
        outstanding, done = self._outstanding, self._done
        moved = None
        while outstanding and outstanding[0] in done:
            offset = outstanding.popleft()
            done.discard(offset)
            moved = offset + 1
        if moved is not None:
            self.committable = moved
        return moved

    def lowest_unfinished(self) -> int | None:
        return self._outstanding[0] if self._outstanding else None

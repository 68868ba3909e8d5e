"""PartitionOffsets: which offset of a partition may be committed. Pure: no Kafka, no threads.

Kafka commits a position, not a set: committing N says "every offset below N is done". With
parallel handlers, offsets finish out of order, so the committable position is the lowest
offset still unfinished (or one past the last offset seen when everything is finished).
Offsets need not be contiguous (compaction and transaction markers leave gaps), so the tracker
remembers the offsets it was given rather than assuming offset + 1.
"""

from __future__ import annotations


class PartitionOffsets:
    """In-flight offsets of one partition, in the order they were fetched (ascending).

    Kept as a list with a moving head rather than a deque: a run of offsets finished in fetch
    order (what one worker reports for a partition lane) is then recognised and passed over
    with one slice comparison, in C, instead of one step per offset.
    """

    __slots__ = ("_done", "_head", "_offsets", "committable")

    # Finished offsets at the head are dropped from the list in blocks of at least this many.
    _COMPACT_AFTER = 4096

    def __init__(self) -> None:
        self._offsets: list[int] = []
        self._head = 0  # offsets before it are finished and committable
        self._done: set[int] = set()  # finished, but behind an unfinished one
        # The position to commit: every offset below it is finished. None until one finishes.
        self.committable: int | None = None

    def __len__(self) -> int:
        """Offsets dispatched and not yet committable: the partition's outstanding work."""
        return len(self._offsets) - self._head

    def add_run(self, offsets: list[int]) -> None:
        """Record fetched offsets, ascending and above any offset added before."""
        self._offsets.extend(offsets)

    def finish_run(self, offsets: list[int]) -> None:
        """Mark offsets finished; cheapest when they are the next ones in fetch order."""
        head = self._head
        end = head + len(offsets)
        if not self._done and self._offsets[head:end] == offsets:
            self._head = end
        else:
            self._done.update(offsets)

    def advance(self) -> int | None:
        """Drop the finished prefix; return the new committable position if it moved."""
        offsets, head, done = self._offsets, self._head, self._done
        size = len(offsets)
        if done:
            while head < size and offsets[head] in done:
                done.discard(offsets[head])
                head += 1
        if head == 0 or (self.committable is not None and offsets[head - 1] < self.committable):
            return None
        moved = offsets[head - 1] + 1
        self.committable = moved
        if head >= self._COMPACT_AFTER or head == size:
            del offsets[:head]
            head = 0
        self._head = head
        return moved

    def lowest_unfinished(self) -> int | None:
        head = self._head
        return self._offsets[head] if head < len(self._offsets) else None

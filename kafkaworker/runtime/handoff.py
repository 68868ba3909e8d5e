"""The hand-off between the poll side and the execute side, in one place: what the poll thread
dispatches (runs of messages, each holding its partition's lease), what the execute side
reports back (completions), and the Executor protocol the poll side drives.

Dependencies point here from both sides: poll/ and execute/ import this module, never each
other. A lease is the only state they share, and each of its fields has one writer: the poll
thread creates it and sets `revoked` (through `Executor.revoke`, which also wakes whatever
waits on it); the execute side only reads it.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Collection, Sequence
from enum import IntEnum
from typing import Any, NamedTuple, Protocol

from kafkaworker.message import DispatchedMessage
from kafkaworker.runtime.source import Partition


class Lease:
    """One partition during one assignment, as the execute side sees it. A partition assigned
    again gets a new lease (its `generation` counts the poll thread's assignments), so work
    and reports of an earlier assignment are told apart by identity."""

    __slots__ = ("generation", "partition", "revoked")

    def __init__(self, partition: Partition, generation: int = 0) -> None:
        self.partition = partition
        self.generation = generation
        # Set by the poll thread when the partition's work must stop (revoke, lost,
        # shutdown): unstarted messages are dropped, waits end, nothing more starts. A plain
        # attribute read is atomic; the execute side only reads it.
        self.revoked = False

    def __repr__(self) -> str:
        state = " revoked" if self.revoked else ""
        return f"<Lease {self.partition} generation={self.generation}{state}>"


# A message dispatched to the execute side, with its partition's lease.
Dispatched = DispatchedMessage[Lease]
# Messages of one partition, in fetch order, with their lease: how the poll thread hands work
# over.
Run = tuple[Lease, list[Dispatched]]


class Outcome(IntEnum):
    # Dropped before it started, or given up on revoke or shutdown: never committed past.
    NOT_FINISHED = 0
    # Handled, skipped, or handed on to a delayed retry topic (acknowledged by the broker).
    FINISHED = 1
    # Written to the dead-letter topic and acknowledged: finished, and counted by the breaker.
    DEAD_LETTERED = 2
    # ack="manual": msg.ack() reports the message itself. Never put on the completion queue.
    AWAITING_ACK = 3
    # Queue mode (share groups) only: a retryable failure with deliveries left, RELEASEd to the
    # share group, which delivers it again (maybe to another member) with its count raised.
    RELEASED = 4
    # Queue mode only: retries spent (or a fatal error) and no DLQ to write it to: REJECTed
    # (archived by the broker, never delivered again), logged as an error.
    REJECTED = 5


class Completion(NamedTuple):
    """Offsets of one partition's lease, ascending, that ended with one outcome."""

    lease: Lease
    offsets: list[int]
    outcome: Outcome


# The execute side puts lists of completions; the poll thread alone takes them.
CompletionQueue = queue.SimpleQueue[list[Completion]]


def not_finished(messages: Sequence[Dispatched]) -> list[Completion]:
    """Completions giving `messages` up, one per lease (a batch of ordering="none" mixes
    partitions), offsets ascending."""
    by_lease: dict[Lease, list[int]] = {}
    for msg in messages:
        by_lease.setdefault(msg.lease, []).append(msg.offset)
    return [Completion(lease, sorted(o), Outcome.NOT_FINISHED) for lease, o in by_lease.items()]


class HeldRecord(NamedTuple):
    """A record an exactly_once handler's message makes: encoded, not produced yet."""

    topic: str
    key: bytes | str | None
    value: bytes | None
    headers: list[tuple[str, Any]]
    partition: int = -1  # the partitioner's choice
    # Its open `send {topic}` span (tracing.enabled: tracing/spans.py, TransactionSpans),
    # ended when the transaction's producer reports the record's delivery.
    sending: Any = None


class HeldWrites:
    """The writes of an exactly_once handler's finished messages, held from the execute side
    (which adds a message's records before it reports the message finished) to the poll
    thread's transaction (which takes them once the message's offset is committable).

    The hand-off rule of exactly-once: a transaction only ever holds writes of messages whose
    offsets it commits. A message finished above its partition's contiguous position keeps
    its writes here until the position passes it, however long the message below it runs;
    then they go into the transaction that commits that position, in offset order (which
    keeps each key's order). Writes are held by lease: those of an earlier assignment of a
    partition (a call that outlived its revoke) are never taken for the next one.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_lease: dict[Lease, dict[int, list[HeldRecord]]] = {}
        # Messages whose records the broker refused for themselves (too large, no such topic,
        # not authorized), by partition and offset, with how often: each refusal counts as a
        # failed attempt of the message, as a failed delivery does at least once. Delivered
        # again after the abort, its first attempts fail with the error (HeldOutputs), so
        # the failure policy retries it and, once the refusals outnumber its retries, sends
        # it to the DLQ, instead of every transaction that holds its records aborting.
        self._refused: dict[tuple[Partition, int], tuple[BaseException, int]] = {}

    def hold(self, lease: Lease, offset: int, records: list[HeldRecord]) -> None:
        """The records of the message at `offset` (a message holds once: a second hold of
        the same offset replaces the first)."""
        with self._lock:
            held = self._by_lease.get(lease)
            if held is None:
                held = self._by_lease[lease] = {}
            held[offset] = records

    def take(self, lease: Lease, below: int) -> list[tuple[int, HeldRecord]]:
        """Remove and return the records of the lease's offsets below `below`, in offset
        order, each with its message's offset."""
        with self._lock:
            held = self._by_lease.get(lease)
            if not held:
                return []
            offsets = sorted(o for o in held if o < below)
            return [(offset, record) for offset in offsets for record in held.pop(offset)]

    def refuse(self, partition: Partition, offset: int, error: BaseException) -> None:
        with self._lock:
            _, count = self._refused.get((partition, offset), (error, 0))
            self._refused[(partition, offset)] = (error, count + 1)

    def refusal(self, partition: Partition, offset: int) -> tuple[BaseException, int] | None:
        """Why and how often the broker refused a record of this message, if it did."""
        if not self._refused:  # the common case, without the lock
            return None
        with self._lock:
            return self._refused.get((partition, offset))

    def drop(self, keep: Collection[Lease]) -> None:
        """Forget the writes of every lease not in `keep` (partitions let go, or assignments
        rewound)."""
        with self._lock:
            for lease in [lease for lease in self._by_lease if lease not in keep]:
                del self._by_lease[lease]

    def leases(self) -> list[Lease]:
        with self._lock:
            return list(self._by_lease)

    def messages(self) -> int:
        """Messages whose writes are held."""
        with self._lock:
            return sum(map(len, self._by_lease.values()))


class Executor(Protocol):
    """The execute side, as the poll thread drives it. Every message submitted is reported
    back exactly once on the completion queue (finished, dead-lettered, not finished...),
    which is what lets the poll thread wait precisely for in-flight work on revoke and
    shutdown."""

    @property
    def recent_handler_seconds(self) -> float:
        """Mean handler time per message lately: backpressure treats slow handlers
        differently from fast ones."""
        ...

    def handler_seconds_p99(self, window: float = 60.0) -> float | None:
        """The 99th percentile of handler times over the last `window` seconds, of the calls
        timed one by one (all of a slow handler's, a sample of a fast one's); None if none."""
        ...

    def start(self) -> None: ...

    def submit(self, runs: list[Run]) -> None:
        """Queue runs (each of one partition, in fetch order); called once per batch."""
        ...

    def revoke(self, leases: Sequence[Lease]) -> list[Dispatched]:
        """Stop work on these leases: mark them revoked (nothing more starts, waits end),
        and return their queued, unstarted messages, which are not reported otherwise."""
        ...

    def cancel(self, leases: Sequence[Lease]) -> None:
        """Give up the calls still running for these revoked leases, where that is possible
        (a coroutine can be cancelled, a thread cannot)."""
        ...

    def close(self, timeout: float = 1.0) -> None:
        """Stop the workers; a handler still running in a thread is left alone."""
        ...


__all__ = [
    "Completion",
    "CompletionQueue",
    "Dispatched",
    "Executor",
    "HeldRecord",
    "HeldWrites",
    "Lease",
    "Outcome",
    "Run",
    "not_finished",
]

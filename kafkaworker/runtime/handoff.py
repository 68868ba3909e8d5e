"""What passes between the poll side and the execute side: runs of messages one way,
completions (offsets with their outcome) the other."""

from __future__ import annotations

import queue
from enum import IntEnum
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from kafkaworker.message import Message
    from kafkaworker.runtime.poll.partitions import PartitionState

# Messages of one partition, in fetch order: how the poll thread hands work over.
Run = tuple["PartitionState", list["Message[Any]"]]


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
    """Offsets of one partition, ascending, that ended with one outcome."""

    state: PartitionState
    offsets: list[int]
    outcome: Outcome


# The execute side puts lists of completions; the poll thread alone takes them.
CompletionQueue = queue.SimpleQueue[list[Completion]]


def drain(completions: CompletionQueue, timeout: float | None = None) -> list[Completion]:
    """Everything reported so far; with a timeout, wait that long for the first report."""
    done: list[Completion] = []
    try:
        if timeout is not None:
            done.extend(completions.get(timeout=timeout))
        while True:
            done.extend(completions.get_nowait())
    except queue.Empty:
        pass
    return done

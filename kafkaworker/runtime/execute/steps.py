"""Steps: what the failure path asks an executor to do. Attempts and batches yield them; a
worker thread carries them out blocking, an event loop awaiting. The reply sent back into the
generator is given with each step."""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from kafkaworker.message import Message
    from kafkaworker.runtime.failures.deadletter import FailedRecord
    from kafkaworker.runtime.poll.partitions import PartitionState


class Call(NamedTuple):
    """Call the handler: `func(arg)` (awaited when it is a coroutine function). Reply: Called."""

    func: Callable[[Any], Any]
    arg: Any


class Called(NamedTuple):
    result: Any = None
    error: BaseException | None = None


class Emit(NamedTuple):
    """Produce the handler's outputs for `msg` and wait for every acknowledgement. Reply: the
    error (encoding, delivery), or None."""

    msg: Message[Any]
    result: Any


class Write(NamedTuple):
    """Write a failed message's record (to a retry topic or the DLQ) and wait for the broker's
    acknowledgement. Reply: the error, or None."""

    record: FailedRecord


class Sleep(NamedTuple):
    """Wait `seconds` unless one of `partitions` is revoked. Reply: True when one was.
    `stall`: the message has nowhere to go and waits to be retried (a test clock does not
    skip over a stall: it would run the handler again and again)."""

    seconds: float
    partitions: Collection[PartitionState]
    stall: bool = False


Step = Call | Emit | Write | Sleep

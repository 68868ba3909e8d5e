"""Steps: what running a handler's messages asks of the thread or loop it runs on.

The executor core (core.py) runs messages as generators that do no I/O and never wait: they
yield a step wherever something must be waited for, and a driver carries it out, a worker
thread blocking (threads.py), the event loop awaiting (loop.py); the step's reply is sent back
into the generator. An async handler's call is yielded as the awaitable it returned (the loop
awaits it and sends back its result, or throws its error in); a def handler is called inline
and yields nothing, so the hot path of a thread pays nothing for the generator.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from kafkaworker.runtime.execute.outputs import FailedRecord
    from kafkaworker.runtime.handoff import Dispatched, Lease


class Emit(NamedTuple):
    """Produce the handler's outputs for `msg` and wait for every acknowledgement (or, where
    the core defers acknowledgements, leave their futures on `msg.unacked`). Reply: the error
    (encoding, delivery), or None."""

    msg: Dispatched
    result: Any
    # exactly_once: what app.producer was asked to send during the call (producer.HeldSend),
    # held with the outputs.
    sends: list[Any] | None = None


class Acks(NamedTuple):
    """Wait until every one of `futures` (produced outputs) is done, or the outputs' produce
    timeout has passed. Reply: None (the waiter reads the futures)."""

    futures: list[Any]


class Write(NamedTuple):
    """Write a failed message's record (to a retry topic or the DLQ) and wait for the broker's
    acknowledgement (exactly_once: hold it for the transaction that commits `msg`). Reply: the
    error, or None."""

    record: FailedRecord
    msg: Dispatched


class Sleep(NamedTuple):
    """Wait `seconds` unless one of `leases` is revoked. Reply: True when one was.
    `stall`: the message has nowhere to go and waits to be retried (it waits in real time
    under every clock: see clock.py)."""

    seconds: float
    leases: Collection[Lease]
    stall: bool = False


class Idle(NamedTuple):
    """Wait up to `seconds` for more work (`until()`: there is some), or with 0, let the other
    coroutines have the loop. Reply: None."""

    seconds: float
    until: Callable[[], bool]


Step = Emit | Acks | Write | Sleep | Idle

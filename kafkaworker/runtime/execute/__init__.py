"""The execute side: how handler calls run. The poll thread talks to this protocol.

- pool.py: worker threads over lanes (lanes.py), for plain `def` handlers;
- aio.py: coroutines on the process's event loop (event_loop.py), for `async def` handlers;
- attempts.py: one message under the failure policy, batches.py: batch handlers, both as
  steps (steps.py) that either executor carries out.

Every message submitted is reported back exactly once on the completion queue (finished,
dead-lettered, or not finished), which is what lets the poll thread wait precisely for
in-flight work on revoke and shutdown.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from kafkaworker.message import Message
    from kafkaworker.runtime.handoff import Run
    from kafkaworker.runtime.poll.partitions import PartitionState


class Executor(Protocol):
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

    def revoke(self, partitions: Sequence[PartitionState]) -> list[Message[Any]]:
        """Stop work on these partitions: mark them revoked (nothing more starts, waits end),
        and return their queued, unstarted messages, which are not reported otherwise."""
        ...

    def cancel(self, partitions: Sequence[PartitionState]) -> None:
        """Give up the calls still running for these revoked partitions, where that is
        possible (a coroutine can be cancelled, a thread cannot)."""
        ...

    def close(self, timeout: float = 1.0) -> None:
        """Stop the workers; a handler still running in a thread is left alone."""
        ...

"""What a handler's `inbox=` is to the runtime, without the database driver: the declaration's
value (an `Inbox`, such as kafkaworker.postgres.PostgresInbox) opens, per handler at start-up,
the `InboxCalls` that wrap the handler's calls in a database transaction.

Kept apart from kafkaworker.postgres so that handlers.py and the runtime import no driver: a
worker without the `postgres` extra loads none of it.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

if TYPE_CHECKING:
    from kafkaworker.handlers import HandlerSpec
    from kafkaworker.observability.metrics import Metrics


# Runs a coroutine on the process's event loop and returns its result (EventLoopThread.run):
# an async def handler's inbox opens and closes its pool there.
RunAsync: TypeAlias = Callable[[Coroutine[Any, Any, Any]], Any]


class InboxCalls(Protocol):
    """One handler's inbox at run time: owns its connection pool and closes it."""

    def wrap(self, call: Callable[[Any, Any], Any]) -> Callable[[Any], Any]:
        """The handler call `call(msg, connection)` as the runtime makes it: in a transaction
        that records the message, or not at all when it was recorded before. For an async def
        handler, both return awaitables."""
        ...

    def close(self) -> None: ...


class Inbox(Protocol):
    """A handler's `inbox=`: where handled messages are recorded."""

    def open(
        self,
        spec: HandlerSpec,
        *,
        group: str,
        metrics: Metrics,
        run_async: RunAsync | None = None,
    ) -> InboxCalls:
        """Connect (a pool sized to the handler's concurrency), create the inbox table when
        missing, and return the handler's InboxCalls; raises StartupError in one line.
        `run_async`: how to run on the event loop, for an async def handler."""
        ...

"""A daemon thread with the event that stops it, for the objects that own one (the fleet's
reporter, reader and cluster watch, the dashboard's sampler, a supervised child's status
writer): the owner starts it and its close path stops and joins it, here in one way."""

from __future__ import annotations

import threading
from collections.abc import Callable


class OwnedThread:
    """`stopping` is what the thread's loop waits on (`while not stopping.wait(every)`)."""

    __slots__ = ("_thread", "stopping")

    def __init__(self, target: Callable[[], None], name: str) -> None:
        self.stopping = threading.Event()
        # Daemon: a stop path that times out must not keep the interpreter from exiting.
        self._thread = threading.Thread(target=target, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the loop to end and wait up to `timeout` for it (a thread never started is
        stopped already)."""
        self.stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

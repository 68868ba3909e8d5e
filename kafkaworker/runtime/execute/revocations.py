"""Revocations: stop work on partitions and wake the worker threads waiting on them."""

from __future__ import annotations

import threading
from collections.abc import Collection

from kafkaworker.runtime.poll.partitions import PartitionState


class Revocations:
    """One condition for a handler's workers, so that one wait can watch several partitions
    (a batch of ordering="none" mixes them) and ends the moment any of them is revoked."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())

    def revoke(self, partitions: Collection[PartitionState]) -> None:
        """Mark them revoked (on the poll thread) and cut every wait on them short."""
        with self._cond:
            for state in partitions:
                state.revoked = True
            self._cond.notify_all()

    def wait_unless_revoked(self, partitions: Collection[PartitionState], timeout: float) -> bool:
        """Wait up to `timeout` seconds; True (at once) when one of them is revoked."""
        with self._cond:
            return self._cond.wait_for(lambda: any(s.revoked for s in partitions), timeout)

"""PollLoop: what the two poll threads share, the stream mode's (poller.py: a consumer group,
offsets, pauses, rebalances) and the queue mode's (share_poller.py: a share group, a fetch at a
time, acknowledgements).

The skeleton is written once: subscribe, turn until asked to stop, then shut down: give up
what was not started, serve the group while the running handlers finish within
shutdown_timeout, take their reports, make what is finished durable, cancel what still runs,
say what did not finish, close. Each loop fills in what is its own: a turn, how completions
are taken, how the group is served while draining, how finished work becomes durable.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable

from kafkaworker.handlers import HandlerSpec
from kafkaworker.observability.metrics import Metrics
from kafkaworker.runtime.clock import Clock
from kafkaworker.runtime.handoff import (
    Completion,
    CompletionQueue,
    Executor,
    Lease,
    drain,
    not_finished,
)
from kafkaworker.runtime.poll.gauges import PollGauges
from kafkaworker.settings import Settings

# How long a shutdown's drain waits for reports at a time, serving the group in between.
_DRAIN_SLICE = 0.05


class PollLoop(ABC):
    """One handler's poll thread; owns its source and its stop path."""

    def __init__(
        self,
        spec: HandlerSpec,
        settings: Settings,
        executor: Executor,
        completions: CompletionQueue,
        *,
        gauges: PollGauges,
        metrics: Metrics,
        clock: Clock,
    ) -> None:
        self.spec = spec
        self.settings = settings
        self._executor = executor
        self._completions = completions
        self._gauges = gauges
        self._metrics = metrics
        self._clock = clock
        self._stopping = threading.Event()
        # When a shutdown's drain gives up on running handlers (infinity until it starts).
        self._shutdown_deadline = float("inf")
        # Messages still running when shutdown_timeout ran out (not committed or released:
        # delivered again), by partition or group, for the Runner's last line.
        self.unfinished_at_exit: dict[str, int] = {}

    # -- lifecycle (called from the HandlerRuntime) --------------------------------------------

    def request_stop(self) -> None:
        self._stopping.set()

    def run(self) -> None:
        """The poll thread's body: subscribe, turn until asked to stop, then shut down."""
        self._subscribe()
        try:
            while not self._stopping.is_set():
                self.turn()
        finally:
            self._shutdown()

    @abstractmethod
    def turn(self) -> None:
        """One turn of the loop."""

    # -- what each loop fills in ---------------------------------------------------------------

    @abstractmethod
    def _subscribe(self) -> None: ...

    @abstractmethod
    def _leases(self) -> list[Lease]:
        """The leases work may still run on."""

    @abstractmethod
    def _collect(self, completions: Iterable[Completion]) -> None:
        """Take reported completions into account."""

    @abstractmethod
    def _outstanding(self) -> int:
        """Messages handed to the executor and not reported back."""

    @abstractmethod
    def _stop_taking(self) -> None:
        """Shutdown begins: no more work starts."""

    @abstractmethod
    def _serve(self) -> None:
        """Serve the group while running handlers finish (a shutdown's drain)."""

    @abstractmethod
    def _left_running(self) -> dict[str, int]:
        """What still runs after the drain (given up: delivered again), by partition or
        group; said in the log."""

    @abstractmethod
    def _make_durable(self, deadline: float) -> None:
        """Shutdown: make what is finished durable (commit, acknowledge)."""

    @abstractmethod
    def _close(self) -> None:
        """Close the source."""

    # -- shared ----------------------------------------------------------------------------------

    def _drain(self, timeout: float | None = None) -> list[Completion]:
        return drain(self._completions, timeout)

    def _give_up_unstarted(self, leases: list[Lease]) -> int:
        """Revoke leases: their queued, unstarted messages come back from the executor and
        are accounted as not finished at once; how many."""
        dropped = self._executor.revoke(leases)
        self._collect(not_finished(dropped))
        return len(dropped)

    def _shutdown(self) -> None:
        """Stop taking work, finish what runs within shutdown_timeout, make it durable, close."""
        self._gauges.ready(False)  # draining: not ready any more
        clock = self._clock
        self._shutdown_deadline = deadline = clock.monotonic() + self.settings.shutdown_timeout
        try:
            self._stop_taking()
            while self._outstanding() and clock.monotonic() < deadline:
                self._gauges.beat()  # waiting on handlers is not a hang
                self._serve()
                self._collect(self._drain(timeout=_DRAIN_SLICE))
            self._collect(self._drain())
            self._executor.cancel(self._leases())
            self.unfinished_at_exit = self._left_running()
            self._make_durable(deadline)
        finally:
            self._close()
            self._executor.close()

"""Pausing: which partitions are paused, and why.

A partition is paused while backpressure limits it (poll/backpressure.py), while the circuit
breaker is open (all of the handler's partitions), while it holds retry records that are
not due yet (poll/delayed.py), or while its commits go unacknowledged (poll/poller.py,
COMMIT_HOLD_AFTER). The poll thread applies the changes to the source.
"""

from __future__ import annotations

from collections.abc import Collection

import structlog

from kafkaworker.observability.metrics import Metrics
from kafkaworker.runtime.failures.policy import CircuitBreaker
from kafkaworker.runtime.poll.backpressure import Backpressure
from kafkaworker.runtime.poll.delayed import DelayedRetries
from kafkaworker.runtime.poll.partitions import PartitionState
from kafkaworker.runtime.source import Partition

log = structlog.get_logger("kafkaworker.poller")


class Pausing:
    def __init__(
        self,
        backpressure: Backpressure,
        delayed: DelayedRetries,
        breaker: CircuitBreaker | None,
        *,
        metrics: Metrics,
        handler: str,
    ) -> None:
        self.backpressure = backpressure
        self._delayed = delayed
        self._breaker = breaker
        self._circuit_open = metrics.circuit_open.labels(handler)
        self._handler = handler
        # Why each partition paused by the last update() was paused: for the DEBUG log.
        self.reasons: dict[PartitionState, str] = {}
        # Partitions an operator paused from the dashboard: held until the operator resumes
        # them (or they are revoked). Written by the dashboard's thread, read here.
        self.operator_held: set[Partition] = set()
        # Partitions whose commits the coordinator has not acknowledged for a while (set by
        # the poll thread each turn): work finished now could not be made durable.
        self.commit_held: set[Partition] = set()
        # An operator's breaker request ("open" / "close"), applied at the next update().
        self.breaker_request: str | None = None

    def update(
        self, partitions: Collection[PartitionState], handler_seconds: float
    ) -> tuple[list[PartitionState], list[PartitionState]]:
        """The partitions to pause and to resume now; their `paused` is set accordingly, and
        `reasons` says why each one paused now was."""
        keep_paused = self.backpressure.limited(partitions, handler_seconds)
        breaker_open = self._update_breaker()
        pause: list[PartitionState] = []
        resume: list[PartitionState] = []
        reasons = self.reasons
        reasons.clear()
        held = self.operator_held
        commit_held = self.commit_held
        for state in partitions:
            by_operator = bool(held) and state.topic_partition in held
            by_commits = bool(commit_held) and state.topic_partition in commit_held
            want = (
                state in keep_paused
                or breaker_open
                or by_operator
                or by_commits
                or self._delayed.holds(state)
            )
            if want != state.paused and not state.lease.revoked:
                state.paused = want
                if want:
                    pause.append(state)
                    reasons[state] = state.pause_reason = (
                        "operator"
                        if by_operator
                        else "circuit breaker open"
                        if breaker_open
                        else "delayed retry not due"
                        if self._delayed.holds(state)
                        else "commits not acknowledged"
                        if by_commits
                        else "backpressure"
                    )
                else:
                    state.pause_reason = ""
                    resume.append(state)
        return pause, resume

    def _update_breaker(self) -> bool:
        breaker = self._breaker
        if breaker is None:
            return False
        share = breaker.share
        request, self.breaker_request = self.breaker_request, None
        if request is not None:
            # The action itself is logged by the dashboard, with who asked.
            breaker.force(request == "open")
            self._circuit_open.set(1 if breaker.open else 0)
            return breaker.open
        transition = breaker.update()
        if transition == "opened":
            self._circuit_open.set(1)
            log.error(
                "circuit breaker opened: most messages are going to the dead-letter topic; "
                "pausing the handler instead",
                handler=self._handler,
                dead_lettered_share=round(share, 2),
                cooldown=breaker.cooldown,
            )
        elif transition == "closed":
            self._circuit_open.set(0)
            log.warning("circuit breaker closed: resuming", handler=self._handler)
        return breaker.open

"""HandlerRuntime: one handler's source (through its poll loop), executor and poll thread, as
the composition root (compose.py) wired them; it owns the poll thread and stops it."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import structlog

from kafkaworker.handlers import HandlerSpec
from kafkaworker.runtime.execute.attempts import Attempts
from kafkaworker.runtime.failures.policy import CircuitBreaker
from kafkaworker.runtime.handoff import Executor
from kafkaworker.runtime.poll.poller import PollLoop
from kafkaworker.serialization import Codec

log = structlog.get_logger("kafkaworker.runtime")


@dataclass(eq=False)
class HandlerRuntime:
    """Owns one handler's poll thread, which owns the source and stops the executor.
    `codec` encodes the handler's outputs (and the test client's sends); `error` is what ended
    the poll thread, if anything did."""

    spec: HandlerSpec
    poller: PollLoop
    executor: Executor
    attempts: Attempts
    breaker: CircuitBreaker | None
    codec: Codec
    error: BaseException | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self._thread = threading.Thread(
            target=self._run_poller, name=f"kw-{self.spec.name}-poll", daemon=True
        )

    def start(self) -> None:
        self.executor.start()
        self._thread.start()

    def request_stop(self) -> None:
        self.poller.request_stop()

    def join(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run_poller(self) -> None:
        try:
            self.poller.run()
        except BaseException as exc:  # recorded for the Runner, which decides the exit code
            self.error = exc
            log.exception("poll thread failed", handler=self.spec.name)

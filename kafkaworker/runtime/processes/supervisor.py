"""Supervisor: `kafkaworker run MODULE:APP --processes N`, for CPU-bound handlers.

Python runs one thread of Python at a time per process; N worker processes, each its own
consumer group member, use N cores. The supervisor owns the children and their stop path:
- each child runs in its own session, so a terminal's Ctrl+C reaches the supervisor only and
  is forwarded once (a child must not see SIGINT and then SIGTERM: the second signal would
  cut its graceful shutdown short);
- the first SIGTERM/SIGINT is forwarded as SIGTERM and the supervisor waits for the children
  to drain, commit and leave; a second one is forwarded too, so they exit at once;
- a child that exits on its own is restarted with exponential backoff; more than
  `max_crashes` crashes within `crash_window` seconds stop everything and exit 1.
Every log line carries the child's pid. With metrics.port set, the supervisor serves
/metrics, /healthz and /readyz for all children: they write their values to files in a
directory of the supervisor's (prometheus-client's multiprocess mode), aggregated on scrape.
The dashboard too: the children write their status there once a second, and the supervisor
leaves operator actions there for the child they concern (runtime/status.py).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, multiprocess

from kafkaworker.observability.dashboard import Dashboard
from kafkaworker.observability.health import Health, evaluate
from kafkaworker.observability.metrics import MULTIPROC_ENV, multiprocess_registry
from kafkaworker.observability.server import MetricsServer
from kafkaworker.runtime.status import forget, read_statuses, send_action
from kafkaworker.settings import DashboardSettings

log = structlog.get_logger("kafkaworker.supervisor")


@dataclass
class Child:
    index: int
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    next_start: float = 0.0


@dataclass
class Supervisor:
    command: Sequence[str]  # how to start one worker process
    processes: int
    max_crashes: int = 5
    crash_window: float = 60.0
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = None
    stale_after: float = 90.0
    dashboard: DashboardSettings = field(default_factory=DashboardSettings)
    children: list[Child] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._signals = 0
        self._crashes: deque[float] = deque()
        self._metrics_dir: str | None = None
        self._metrics_registry: CollectorRegistry | None = None
        self.metrics_server: MetricsServer | None = None

    def run(self) -> int:
        """Start the children, keep them running until a signal; the exit code."""
        with contextlib.ExitStack() as stack:
            if self.metrics_port is not None:
                self._metrics_dir = stack.enter_context(
                    tempfile.TemporaryDirectory(prefix="kafkaworker-metrics-")
                )
                self._metrics_registry = multiprocess_registry(self._metrics_dir)
                dashboard = None
                if self.dashboard.enabled:
                    # The children write their status beside their metrics (runtime/status.py).
                    dashboard = Dashboard(
                        self.dashboard,
                        self._metrics_registry,
                        self._statuses,
                        control=self._control,
                        expected_processes=self.processes,
                    )
                self.metrics_server = stack.enter_context(
                    MetricsServer(
                        self.metrics_host,
                        self.metrics_port,
                        self._metrics_registry,
                        self.health,
                        dashboard,
                    )
                )
            return self._run()

    def health(self) -> Health:
        """Live and ready only when every child is running and reports so. Called on the
        endpoint's thread: it reads each child's process once, and only returncode (polling
        here would race the main thread's wait for the exit status)."""
        assert self._metrics_registry is not None
        health = evaluate(
            self._metrics_registry,
            stale_after=self.stale_after,
            processes=self.processes,
        )
        processes = [c.process for c in list(self.children)]
        running = sum(1 for p in processes if p is not None and p.returncode is None)
        health.detail["processes_running"] = running
        if running < self.processes:
            health.ready = False
        return health

    def _running_pids(self) -> list[int]:
        processes = [c.process for c in list(self.children)]
        return [p.pid for p in processes if p is not None and p.returncode is None]

    def _statuses(self) -> list[dict[str, Any]]:
        assert self._metrics_dir is not None
        return read_statuses(self._metrics_dir, self._running_pids())

    def _control(self, request: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """Route an operator action to the children it concerns: a partition's owner, or
        every child running the handler (each has its own breaker)."""
        assert self._metrics_dir is not None
        statuses = self._statuses()
        name = request["handler"]
        if request["action"] in {"pause", "resume"}:
            pids = [
                row["pid"]
                for status in statuses
                for row in status.get("partitions", ())
                if (row["handler"], row["topic"], row["partition"])
                == (name, request["topic"], request["partition"])
            ]
            if not pids:
                where = f"{request['topic']}[{request['partition']}]"
                return 409, {"error": f"{where} is not assigned to handler {name!r} here"}
        else:
            pids = [
                status["pid"]
                for status in statuses
                if any(h["name"] == name for h in status.get("handlers", ()))
            ]
            if not pids:
                return 404, {"error": f"no handler {name!r} in this worker"}
        for pid in pids:
            send_action(self._metrics_dir, pid, request)
        return 202, {"accepted": request["action"], "pids": pids}

    def _run(self) -> int:
        self._install_signal_handlers()
        self.children = [Child(i) for i in range(self.processes)]
        failed = True
        try:
            for child in self.children:
                self._start(child)
            log.info("supervisor started", processes=self.processes, pid=os.getpid())
            failed = False
            while not self._stop.wait(0.2):
                failed = self._watch()
                if failed:
                    break
        finally:
            # Also when the supervisor itself fails: children run in sessions of their own
            # and would outlive it.
            code = self._shutdown(failed=failed)
        return code

    def stop(self) -> None:
        self._stop.set()

    def _start(self, child: Child) -> None:
        if self._stop.is_set():
            return  # stopping: no new children
        env = {**os.environ, "KAFKAWORKER_PROCESS_INDEX": str(child.index)}
        if self._metrics_dir is not None:
            env[MULTIPROC_ENV] = self._metrics_dir
        child.process = subprocess.Popen(list(self.command), env=env, start_new_session=True)
        if self._stop.is_set():  # a signal came while it started: it drains like the others
            child.process.send_signal(signal.SIGTERM)
        log.info(
            "worker process started",
            index=child.index,
            pid=child.process.pid,
            restarts=child.restarts,
        )

    def _watch(self) -> bool:
        """Restart crashed children (with backoff); True when they keep crashing."""
        now = time.monotonic()
        for child in self.children:
            process = child.process
            if process is not None and process.poll() is None:
                continue
            if process is not None:  # it just exited, on its own
                code = process.returncode
                child.process = None
                self._forget_metrics(process.pid)
                if self._stop.is_set():
                    continue
                self._crashes.append(now)
                while self._crashes and now - self._crashes[0] > self.crash_window:
                    self._crashes.popleft()
                delay = min(self.backoff_max, self.backoff_initial * 2**child.restarts)
                child.next_start = now + delay
                child.restarts += 1
                log.error(
                    "worker process exited; restarting",
                    index=child.index,
                    pid=process.pid,
                    exit_code=code,
                    restart_in=delay,
                )
                if len(self._crashes) > self.max_crashes:
                    log.error(
                        "worker processes keep crashing; giving up",
                        crashes=len(self._crashes),
                        window=self.crash_window,
                    )
                    return True
            if child.process is None and now >= child.next_start:
                self._start(child)
        return False

    def _forget_metrics(self, pid: int) -> None:
        """Drop an exited child's live gauges (its counters keep counting in the totals)."""
        if self._metrics_dir is not None:
            multiprocess.mark_process_dead(pid, self._metrics_dir)  # type: ignore[no-untyped-call]
            forget(self._metrics_dir, pid)

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def on_signal(signum: int, frame: FrameType | None) -> None:
            self._signals += 1
            # Forward every signal as SIGTERM: the first starts a graceful drain in each
            # child, a second makes them exit at once.
            for child in self.children:
                if child.process is not None and child.process.poll() is None:
                    child.process.send_signal(signal.SIGTERM)
            self._stop.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    def _shutdown(self, *, failed: bool) -> int:
        if failed:
            for child in self.children:
                if child.process is not None and child.process.poll() is None:
                    child.process.send_signal(signal.SIGTERM)
        codes = []
        for child in self.children:
            if child.process is None:
                continue
            try:
                codes.append(child.process.wait())
            except KeyboardInterrupt:  # pragma: no cover - signals are handled above
                child.process.kill()
                codes.append(child.process.wait())
        # A child killed by signal N has returncode -N: report it as a shell would (128 + N).
        codes = [128 - code if code < 0 else code for code in codes]
        log.info("supervisor stopped", exit_codes=codes)
        if failed:
            return 1
        return max(codes, default=0)

"""One process's status for the dashboard, and the operator actions carried out in it.

ProcessStatus reads what the runtime keeps anyway: each poll thread's partition rows (rebuilt
once a second with its gauges), the handlers' specs and breakers, and the failures buffer
(filled on the failure path only). Nothing here runs per message.

Under `--processes N` each child writes its status to a file in the supervisor's metrics
directory once a second (StatusFiles), and picks up the operator actions the supervisor
leaves there for it; the supervisor's dashboard reads the files of its running children.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import structlog

from kafkaworker.observability.metrics import Metrics
from kafkaworker.owned_thread import OwnedThread
from kafkaworker.runtime.failures.recent import RecentFailures
from kafkaworker.runtime.source import Partition

if TYPE_CHECKING:  # the supervisor reads status files without loading the runtime
    from kafkaworker.runtime.handler_runtime import HandlerRuntime

log = structlog.get_logger("kafkaworker.dashboard")

STATUS_EVERY = 1.0


class ProcessStatus:
    """The status of the process's Runner; `handlers` is set once they exist."""

    def __init__(self, app: str, metrics: Metrics, state: Callable[[], str]) -> None:
        self.app = app
        self.failures = RecentFailures()
        self.handlers: Sequence[HandlerRuntime] = ()
        self._metrics = metrics
        self._state = state
        self._started = time.time()
        self._index = os.environ.get("KAFKAWORKER_PROCESS_INDEX")
        # Whether an operator holds (handler, group, partition) from its assignment on: the
        # fleet's standing pauses (fleet/control.py), when the fleet takes commands.
        self.holding: Callable[[str, str, Partition], bool] | None = None

    def attach(self, handlers: Sequence[HandlerRuntime], *, failures: bool = True) -> None:
        """Show these handlers; with `failures`, keep their recent failures too (formatting a
        traceback per failure is wasted when nothing reads them). Their poll threads ask
        `holding` whether a partition is held from its assignment on."""
        from kafkaworker.runtime.poll.poller import Poller  # noqa: PLC0415 - see the imports

        for runtime in handlers:
            if failures:
                sink = self.failures.sink(runtime.spec.name, runtime.spec.dlq)
                runtime.attempts.failure_sink = sink
            if isinstance(runtime.poller, Poller):
                group = runtime.spec.group or self.app
                runtime.poller.held_at_assignment = functools.partial(
                    self._held, runtime.spec.name, group
                )
        self.handlers = handlers

    def _held(self, handler: str, group: str, partition: Partition) -> bool:
        holding = self.holding
        return holding is not None and holding(handler, group, partition)

    def status(self) -> dict[str, Any]:
        pid = os.getpid()
        now = time.time()
        handlers = []
        partitions = []
        for runtime in self.handlers:
            spec = runtime.spec
            breaker = runtime.breaker
            handlers.append(
                {
                    "name": spec.name,
                    "topics": list(spec.topics),
                    "group": spec.group or self.app,
                    "mode": spec.mode,
                    "ordering": spec.ordering,
                    "concurrency": spec.concurrency,
                    "dlq": spec.dlq,
                    # For the fleet's report: what the handler promises, and how its records
                    # decode (the DLQ explorer decodes them the same way).
                    "guarantee": spec.processing_guarantee,
                    "codec": spec.codec if isinstance(spec.codec, str) else spec.codec.name,
                    "handler_seconds_p99": runtime.executor.handler_seconds_p99(),
                    "breaker": "none"
                    if breaker is None
                    else "held open"
                    if breaker.held
                    else "open"
                    if breaker.open
                    else "closed",
                }
            )
            for row in getattr(runtime.poller, "partition_rows", ()):  # none in queue mode
                partitions.append(
                    {
                        "handler": spec.name,
                        "pid": pid,
                        "topic": row.topic,
                        "partition": row.partition,
                        "committed": row.committable,
                        "log_end": row.log_end,
                        "lag": row.lag,
                        "lag_seconds": row.lag_seconds,
                        "in_flight": row.in_flight,
                        "paused": row.paused,
                        "pause_reason": row.pause_reason or None,
                        "assigned_at": row.assigned_at,
                    }
                )
        return {
            "app": self.app,
            "pid": pid,
            "index": None if self._index is None else int(self._index),
            "started_at": self._started,
            "uptime_seconds": round(now - self._started, 1),
            "rss_bytes": _rss(),
            "threads": _threads(),
            "state": self._state(),
            "handlers": handlers,
            "partitions": partitions,
            "failures": self.failures.entries(),
            "failures_total": self.failures.total,
        }

    def control(self, request: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """Carry out an operator action (validated by the dashboard); (HTTP status, body).
        Accepted actions take effect at the poll thread's next turn."""
        from kafkaworker.runtime.poll.poller import Poller  # noqa: PLC0415 - see the imports

        action, name = request["action"], request["handler"]
        runtime = next((h for h in self.handlers if h.spec.name == name), None)
        if runtime is None:
            return 404, {"error": f"no handler {name!r} in this worker"}
        poller = runtime.poller
        if not isinstance(poller, Poller):
            return 409, {"error": f"handler {name!r} runs in queue mode: no partitions to pause"}
        if action in {"pause", "resume"}:
            where = Partition(request["topic"], request["partition"])
            if not poller.hold(where, action == "pause"):
                return 409, {"error": f"{where} is not assigned to handler {name!r} here"}
        elif not poller.force_breaker(action == "open_breaker"):
            return 409, {
                "error": f"handler {name!r} has no circuit breaker (it needs a dlq and "
                "circuit_breaker.enabled)"
            }
        self._metrics.operator_actions.labels(name, action).inc()
        return 202, {"accepted": action, "pids": [os.getpid()]}


def _rss() -> int | None:
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # not Linux
        return None


def _threads() -> int:
    """Every thread of the process (librdkafka's native threads too), where /proc tells."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


# -- under --processes N: status files and action files in the supervisor's directory -------


def status_path(directory: str, pid: int) -> Path:
    return Path(directory) / f"dashboard-status-{pid}.json"


def read_statuses(directory: str, pids: Sequence[int]) -> list[dict[str, Any]]:
    """The latest status of each running child (a child that has written none yet is left
    out: it is starting)."""
    found = []
    for pid in pids:
        with contextlib.suppress(OSError, orjson.JSONDecodeError):
            found.append(orjson.loads(status_path(directory, pid).read_bytes()))
    return found


def send_action(directory: str, pid: int, request: dict[str, Any]) -> None:
    """Leave an action for child `pid`, picked up within STATUS_EVERY."""
    path = Path(directory) / f"dashboard-action-{pid}-{uuid.uuid4().hex}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(orjson.dumps(request))
    os.replace(tmp, path)  # whole or not at all


def forget(directory: str, pid: int) -> None:
    with contextlib.suppress(OSError):
        status_path(directory, pid).unlink()
    for leftover in Path(directory).glob(f"dashboard-action-{pid}-*.json"):
        with contextlib.suppress(OSError):
            leftover.unlink()


class StatusFiles:
    """A supervised child's status writer: a thread that writes the status once a second and
    carries out the actions left for this process. Owns the thread; close() stops it."""

    def __init__(self, directory: str, status: ProcessStatus) -> None:
        self._directory = directory
        self._status = status
        self._pid = os.getpid()
        self._thread = OwnedThread(self._run, "kw-status")

    def __enter__(self) -> StatusFiles:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._thread.stop()

    def _run(self) -> None:
        path = status_path(self._directory, self._pid)
        tmp = path.with_suffix(".tmp")
        while not self._thread.stopping.wait(STATUS_EVERY):
            try:
                for action in sorted(
                    Path(self._directory).glob(f"dashboard-action-{self._pid}-*.json")
                ):
                    request = orjson.loads(action.read_bytes())
                    action.unlink()
                    status, body = self._status.control(request)
                    if status >= 400:
                        log.warning("dashboard action not carried out", **request, **body)
                tmp.write_bytes(orjson.dumps(self._status.status()))
                os.replace(tmp, path)
            except Exception:  # the next second tries again; the worker must not care
                log.exception("writing the dashboard status failed")

"""Liveness and readiness, judged from the metrics every poll thread keeps fresh.

Reading them from metrics rather than from the threads means one rule serves one process and
a supervisor of N (whose children's values arrive with a `pid` label):
- live: every poll thread turned within `stale_after` seconds. A hung poll thread (a deadlock,
  a callback that never returns) stops turning; a busy handler does not stop it.
- ready: every handler of every expected process has joined its group and is not stopping.
A cluster that stops answering (a hung or unreachable broker) changes neither: restarting or
unlisting workers would not bring the brokers back, and each worker recovers by itself. The
body says so instead (`brokers_not_answering_seconds`), for a person or a dashboard.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry

# A fetch is answered within fetch.wait.max.ms (0.5 s) when all is well; this long without an
# answer is worth telling.
SILENCE_REPORTED = 5.0


@dataclass
class Health:
    live: bool
    ready: bool
    detail: dict[str, Any] = field(default_factory=dict)


def evaluate(
    registry: CollectorRegistry,
    *,
    stale_after: float,
    processes: int = 1,
    now: float | None = None,
) -> Health:
    now = time.time() if now is None else now
    ready: dict[tuple[str, str], float] = {}
    heartbeats: dict[tuple[str, str], float] = {}
    silences: dict[tuple[str, str], float] = {}
    for metric in registry.collect():
        if metric.name == "kafkaworker_ready":
            target = ready
        elif metric.name == "kafkaworker_poll_heartbeat_timestamp_seconds":
            target = heartbeats
        elif metric.name == "kafkaworker_broker_silence_seconds":
            target = silences
        else:
            continue
        for sample in metric.samples:
            key = (sample.labels.get("pid", ""), sample.labels.get("handler", ""))
            target[key] = sample.value
    stale = {
        _name(key): round(now - beat, 1)
        for key, beat in heartbeats.items()
        if now - beat > stale_after
    }
    not_ready = sorted(_name(key) for key, value in ready.items() if value != 1)
    members = len({pid for pid, _ in ready})
    detail: dict[str, Any] = {"handlers": len(ready), "processes": members}
    if stale:
        detail["stale_poll_threads_seconds"] = stale
    if not_ready:
        detail["not_ready"] = not_ready
    if members < processes:
        detail["processes_expected"] = processes
    silent = {_name(key): value for key, value in silences.items() if value >= SILENCE_REPORTED}
    if silent:
        detail["brokers_not_answering_seconds"] = silent
    live = not stale
    return Health(
        live=live,
        ready=live and bool(ready) and not not_ready and members >= processes,
        detail=detail,
    )


def _name(key: tuple[str, str]) -> str:
    pid, handler = key
    return f"{handler}@{pid}" if pid else handler

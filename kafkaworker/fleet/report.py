"""A worker process's report: who it is, its state, its handlers and its partitions (pure).

Built from what ProcessStatus already holds (the partition rows the poll threads rebuild once
a second, the handlers' specs and breakers) and the metrics registry's totals: nothing is
counted for it on the message path. Rates are the counters' growth between two reports.
Failures are not in it (their tracebacks would make it tens of KB): they go to the errors
topic, each once (see FleetReporter).

The JSON is documented in docs/fleet.md; `schema` changes when a field changes meaning.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any

SCHEMA = 1
# The counters a report carries per handler (the dashboard's names for the metrics).
COUNTERS = ("consumed", "finished", "failed", "dead_lettered", "retried_later", "skipped")
# ... and their rates, per second over the last interval.
RATES = ("consumed", "finished", "failed", "dead_lettered")
_PARTITION_FIELDS = (
    "handler",
    "topic",
    "partition",
    "committed",
    "log_end",
    "lag",
    "lag_seconds",
    "in_flight",
    "paused",
    "pause_reason",
    "assigned_at",
)


@dataclass(frozen=True)
class Identity:
    """One process for its whole life: `id` keys its reports (a restarted process, even with
    the same pid in a new container, is another)."""

    id: str
    app: str
    host: str
    pid: int
    started_at: float

    @classmethod
    def of_this_process(cls, app: str, started_at: float | None = None) -> Identity:
        host, pid = socket.gethostname(), os.getpid()
        return cls(
            f"{app}:{host}:{pid}:{uuid.uuid4().hex[:8]}",
            app,
            host,
            pid,
            time.time() if started_at is None else started_at,
        )


@dataclass(frozen=True)
class Sample:
    """The counters per handler at one moment, for the next report's rates."""

    time: float
    counters: dict[str, dict[str, float]]


def build(
    identity: Identity,
    status: dict[str, Any],
    counters: dict[str, dict[str, float]],
    *,
    now: float,
    interval: float,
    version: str,
    previous: Sample | None = None,
    state: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The report of `status` (ProcessStatus.status()) with `counters` (per handler, as the
    dashboard's totals()); `state` overrides the status's (the final report: "stopped")."""
    handlers = []
    for handler in status.get("handlers", ()):
        name = handler["name"]
        counts = counters.get(name, {})
        row = {
            "name": name,
            "group": handler.get("group"),
            "topics": handler.get("topics", []),
            "mode": handler.get("mode"),
            "ordering": handler.get("ordering"),
            "guarantee": handler.get("guarantee", "at_least_once"),
            "concurrency": handler.get("concurrency"),
            "dlq": handler.get("dlq"),
            "codec": handler.get("codec"),
            "breaker": handler.get("breaker"),
            "in_flight": int(counts.get("in_flight", 0)),
            "stalled": int(counts.get("stalled", 0)),
            **{field: int(counts.get(field, 0)) for field in COUNTERS},
            "rates": _rates(name, counts, previous, now),
        }
        handlers.append(row)
    partitions = [
        {field: _rounded(field, row.get(field)) for field in _PARTITION_FIELDS}
        for row in status.get("partitions", ())
    ]
    return {
        "schema": SCHEMA,
        "id": identity.id,
        "app": identity.app,
        "host": identity.host,
        "pid": identity.pid,
        "index": status.get("index"),
        "version": version,
        "started_at": identity.started_at,
        "time": now,
        "interval": interval,
        "state": state or status.get("state", "starting"),
        "rss_bytes": status.get("rss_bytes"),
        "threads": status.get("threads"),
        "failures_total": status.get("failures_total", 0),
        "handlers": handlers,
        "partitions": partitions,
        **(extra or {}),
    }


# Digits kept of the floats a report repeats per partition: a millisecond of time lag, a tenth
# of a second of an assignment's time (18 characters of noise per float otherwise).
_DIGITS = {"lag_seconds": 3, "assigned_at": 1}


def _rounded(field: str, value: Any) -> Any:
    digits = _DIGITS.get(field)
    return round(value, digits) if digits is not None and isinstance(value, float) else value


def _rates(
    name: str, counts: dict[str, float], previous: Sample | None, now: float
) -> dict[str, float]:
    if previous is None or now - previous.time < 0.5:
        return dict.fromkeys(RATES, 0.0)
    before = previous.counters.get(name, {})
    elapsed = now - previous.time
    return {
        field: round(max(0.0, counts.get(field, 0.0) - before.get(field, 0.0)) / elapsed, 3)
        for field in RATES
    }

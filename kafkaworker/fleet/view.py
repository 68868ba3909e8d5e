"""FleetView: the fleet as its reports tell it, materialized (pure, thread-safe).

The reader thread (fleet/reader.py) adds reports, failures, commands and audit entries as it
reads them; the dashboard's HTTP threads ask for the views. A process's state is its latest
report's, except:
- `stopped`: its final report said so (a clean shutdown is shown at once);
- `gone`: three reports missed (nothing for 3 x its interval, plus GRACE for the produce and
  the read): killed, frozen, or cut off from the brokers.
`last_seen` is the report's broker timestamp (the topic is LogAppendTime): one clock for the
whole fleet.

Throughput and errors over time are kept per app in BUCKET-second buckets: each process adds
the rates of its reports in a bucket (their mean), and a bucket's value is the sum over the
processes. Only complete buckets are shown.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from typing import Any

from kafkaworker.fleet.commands import Command, Standing

MISSED = 3
GRACE = 1.0
BUCKET = 10.0
HISTORY = 15 * 60  # seconds of history kept
FAILURES_KEPT = 200
AUDIT_KEPT = 100
_SERIES = ("finished", "failed", "dead_lettered")
_LIVE = frozenset({"starting", "ready", "draining"})


class FleetView:
    """`retention`: how long a process's last report is shown (fleet.retention: the reports
    topic deletes it then too, so a dashboard started later would not show it either)."""

    def __init__(self, retention: float = 3600.0) -> None:
        self._retention = retention
        self._lock = threading.Lock()
        self._reports: dict[str, dict[str, Any]] = {}  # process id -> latest report
        self._seen: dict[str, float] = {}  # process id -> its broker timestamp
        # app -> bucket start -> process id -> [sums of _SERIES..., reports]
        self._history: dict[str, dict[float, dict[str, list[float]]]] = {}
        self._failures: deque[dict[str, Any]] = deque(maxlen=FAILURES_KEPT)
        self._audit: deque[dict[str, Any]] = deque(maxlen=AUDIT_KEPT)
        self._standing = Standing()
        self._commands: dict[str, Command] = {}

    # -- writes (the reader thread) -------------------------------------------------------

    def add_report(self, report: dict[str, Any], seen_at: float) -> None:
        process = report.get("id")
        if not isinstance(process, str):
            return
        with self._lock:
            if seen_at < self._seen.get(process, 0.0):
                return  # an older report, read after a newer one: keep the newer
            self._reports[process] = report
            self._seen[process] = seen_at
            self._add_history(report, process, seen_at)

    def forget(self, process: str) -> None:
        """A tombstone: the process's reports were deleted."""
        with self._lock:
            self._reports.pop(process, None)
            self._seen.pop(process, None)

    def _add_history(self, report: dict[str, Any], process: str, seen_at: float) -> None:
        app = str(report.get("app"))
        buckets = self._history.setdefault(app, {})
        start = math.floor(seen_at / BUCKET) * BUCKET
        sums = buckets.setdefault(start, {}).setdefault(process, [0.0] * (len(_SERIES) + 1))
        for at, series in enumerate(_SERIES):
            sums[at] += sum(h.get("rates", {}).get(series, 0.0) for h in report.get("handlers", ()))
        sums[-1] += 1
        for old in [t for t in buckets if t < seen_at - HISTORY - BUCKET]:
            del buckets[old]

    def add_failure(self, failure: dict[str, Any]) -> None:
        with self._lock:
            self._failures.append(failure)

    def add_audit(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self._audit.append(entry)

    def add_command(self, command: Command) -> None:
        with self._lock:
            self._standing.add(command, process="")
            self._commands[command.id] = command

    # -- reads (the HTTP threads) ---------------------------------------------------------

    def state(self, report: dict[str, Any], seen: float, now: float) -> str:
        if report.get("state") == "stopped":
            return "stopped"
        interval = float(report.get("interval") or 5.0)
        if now - seen > MISSED * interval + GRACE:
            return "gone"
        return str(report.get("state", "starting"))

    def fleet(self, now: float) -> dict[str, Any]:
        """GET /api/fleet: the apps, the processes, the partitions they own, the holds."""
        with self._lock:
            self._forget_older_than(now - self._retention)
            reports = [(r, self._seen[p]) for p, r in self._reports.items()]
            history = {app: self._series(buckets, now) for app, buckets in self._history.items()}
            holds = self._standing.holds()
        processes = []
        for report, seen in sorted(reports, key=lambda rs: (rs[0].get("app", ""), rs[0]["id"])):
            processes.append(
                {
                    **{k: v for k, v in report.items() if k not in ("schema", "time")},
                    "state": self.state(report, seen, now),
                    "reported_state": report.get("state"),
                    "last_seen": seen,
                    "uptime_seconds": round(seen - float(report.get("started_at") or seen), 1),
                }
            )
        apps = [_app(name, processes, history.get(name, [])) for name in _names(processes)]
        partitions = [
            {
                "app": p["app"],
                "group": _group(p, row["handler"]),
                "process": p["id"],
                "host": p["host"],
                "pid": p["pid"],
                **row,
            }
            for p in processes
            if p["state"] in _LIVE
            for row in p.get("partitions", ())
        ]
        partitions.sort(key=lambda r: (r["app"], r["group"] or "", r["topic"], r["partition"]))
        return {
            "time": now,
            "apps": apps,
            "processes": processes,
            "partitions": partitions,
            "holds": holds,
            "history_bucket_seconds": BUCKET,
        }

    def _forget_older_than(self, oldest: float) -> None:
        """A dashboard running for weeks must not keep every pod that ever was."""
        for process in [p for p, seen in self._seen.items() if seen < oldest]:
            del self._reports[process], self._seen[process]
        live = {str(r.get("app")) for r in self._reports.values()}
        for app in set(self._history) - live:
            del self._history[app]

    def _series(
        self, buckets: dict[float, dict[str, list[float]]], now: float
    ) -> list[list[float]]:
        """[[bucket start, finished/s, failed/s, dead-lettered/s], ...], complete buckets."""
        rows = []
        for start in sorted(buckets):
            if start + BUCKET > now - GRACE:
                continue  # still filling
            values = [0.0] * len(_SERIES)
            for sums in buckets[start].values():
                for at in range(len(_SERIES)):
                    values[at] += sums[at] / sums[-1]
            rows.append([start, *(round(v, 2) for v in values)])
        return rows

    def failures(self) -> list[dict[str, Any]]:
        """The latest failures across the fleet, newest first."""
        with self._lock:
            found = list(self._failures)
        found.sort(key=lambda f: f.get("time", 0.0), reverse=True)
        return found

    def audit(self) -> list[dict[str, Any]]:
        """The latest commands, newest first."""
        with self._lock:
            return list(reversed(self._audit))

    def groups(self, now: float) -> list[str]:
        """The consumer groups of live processes' stream handlers (share groups cannot be
        described by the Python admin API)."""
        found = set()
        with self._lock:
            for process, report in self._reports.items():
                if self.state(report, self._seen[process], now) in _LIVE:
                    found |= {
                        h.get("group") or report.get("app")
                        for h in report.get("handlers", ())
                        if h.get("mode") == "stream"
                    }
        return sorted(str(g) for g in found)

    def dlqs(self) -> dict[str, dict[str, Any]]:
        """Every DLQ a handler declared: its app, group, handler and codec."""
        found: dict[str, dict[str, Any]] = {}
        with self._lock:
            for report in self._reports.values():
                for handler in report.get("handlers", ()):
                    if handler.get("dlq"):
                        found.setdefault(
                            handler["dlq"],
                            {
                                "app": report.get("app"),
                                "group": handler.get("group"),
                                "handler": handler.get("name"),
                                "codec": handler.get("codec"),
                                "topics": handler.get("topics", []),
                            },
                        )
        return found

    def codec(self, group: str | None, handler: str | None) -> str | None:
        """The codec a handler declared (for decoding its dead letters), if a report said."""
        with self._lock:
            for report in self._reports.values():
                for h in report.get("handlers", ()):
                    if h.get("name") == handler and (h.get("group") or report.get("app")) == group:
                        return h.get("codec")  # type: ignore[no-any-return]
        return None


def _names(processes: list[dict[str, Any]]) -> list[str]:
    return sorted({str(p.get("app")) for p in processes})


def _group(process: dict[str, Any], handler: str) -> str | None:
    for h in process.get("handlers", ()):
        if h.get("name") == handler:
            return h.get("group") or process.get("app")
    return None


def _app(name: str, processes: list[dict[str, Any]], history: list[list[float]]) -> dict[str, Any]:
    mine = [p for p in processes if p.get("app") == name]
    live = [p for p in mine if p["state"] in _LIVE]
    states: dict[str, int] = {}
    for p in mine:
        states[p["state"]] = states.get(p["state"], 0) + 1
    handlers: dict[str, dict[str, Any]] = {}
    for p in live:
        for h in p.get("handlers", ()):
            row = handlers.setdefault(
                h["name"],
                {
                    **{
                        k: h.get(k)
                        for k in (
                            "name",
                            "group",
                            "topics",
                            "mode",
                            "ordering",
                            "guarantee",
                            "concurrency",
                            "dlq",
                            "codec",
                        )
                    },
                    "breaker": "none",
                    "processes": 0,
                    "in_flight": 0,
                    "stalled": 0,
                    "finished": 0,
                    "failed": 0,
                    "dead_lettered": 0,
                    "rates": {
                        "consumed": 0.0,
                        "finished": 0.0,
                        "failed": 0.0,
                        "dead_lettered": 0.0,
                    },
                },
            )
            row["processes"] += 1
            for field in ("in_flight", "stalled", "finished", "failed", "dead_lettered"):
                row[field] += h.get(field, 0)
            for field, rate in h.get("rates", {}).items():
                row["rates"][field] = round(row["rates"].get(field, 0.0) + rate, 3)
            # Open anywhere is open: each process has its own breaker.
            seen = {row["breaker"], h.get("breaker", "none")}
            row["breaker"] = next(b for b in ("held open", "open", "closed", "none") if b in seen)
    lag = [r.get("lag") for p in live for r in p.get("partitions", ())]
    return {
        "name": name,
        "processes": len(mine),
        "states": states,
        "handlers": sorted(handlers.values(), key=lambda h: h["name"]),
        "throughput": round(sum(h["rates"]["finished"] for h in handlers.values()), 2),
        "errors_per_second": round(sum(h["rates"]["failed"] for h in handlers.values()), 3),
        "lag": sum(v for v in lag if v is not None),
        "history": history,  # [[time, finished/s, failed/s, dead-lettered/s], ...]
    }

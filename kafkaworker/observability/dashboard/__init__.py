"""The worker dashboard, served by the metrics server: GET / (the page), its static files,
GET /api/status and /api/failures (JSON, documented in docs/dashboard.md), and with
dashboard.control the operator actions under POST /api/control/.

It reads what exists already and adds nothing to the message path: handler counts come from
the metrics registry (the supervisor's aggregated one under --processes N), partitions and
processes from each process's status (built once a second by the poll threads, or read from
the children's status files), failures from each process's bounded buffer. A sampler thread
reads the registry's totals every 5 s for the 15-minute throughput chart.
"""

from __future__ import annotations

import hmac
import itertools
import time
from collections import deque
from collections.abc import Callable, Mapping
from importlib import resources
from typing import Any

import orjson
import structlog
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from kafkaworker.observability.server import Request
from kafkaworker.owned_thread import OwnedThread
from kafkaworker.settings import DashboardSettings

log = structlog.get_logger("kafkaworker.dashboard")

SAMPLE_EVERY = 5.0
HISTORY = int(15 * 60 / SAMPLE_EVERY) + 1  # 15 minutes of samples
_BODY_MAX = 4096  # a control request is a few fields

# One process's status (see kafkaworker.runtime.status.process_status); a list of them.
Statuses = Callable[[], list[dict[str, Any]]]
# Carries out an operator action; (HTTP status, JSON body).
Control = Callable[[dict[str, Any]], tuple[int, dict[str, Any]]]
# The app's AsyncAPI document as YAML (kafkaworker.asyncapi), made when asked for.
AsyncApi = Callable[[], str]
ASYNCAPI_PATH = "/asyncapi.yaml"
Reply = tuple[int, bytes, str]

ACTIONS = ("pause", "resume", "open_breaker", "close_breaker")
_COUNTERS = {
    "kafkaworker_messages_consumed_total": "consumed",
    "kafkaworker_messages_finished_total": "finished",
    "kafkaworker_handler_failures_total": "failed",
    "kafkaworker_dead_lettered_total": "dead_lettered",
    "kafkaworker_retried_later_total": "retried_later",
    "kafkaworker_skipped_total": "skipped",
    "kafkaworker_handler_seconds_total": "handler_seconds",
    "kafkaworker_operator_actions_total": "operator_actions",
}
_GAUGES = {
    "kafkaworker_in_flight_messages": "in_flight",
    "kafkaworker_stalled_messages": "stalled",
    "kafkaworker_assigned_partitions": "assigned_partitions",
    "kafkaworker_paused_partitions": "paused_partitions",
}
_STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/common.js": ("common.js", "text/javascript; charset=utf-8"),
    "/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
}


def totals(registry: CollectorRegistry) -> dict[str, dict[str, float]]:
    """Per handler: the counters and gauges the dashboard shows, summed over processes."""
    found: dict[str, dict[str, float]] = {}
    names = {**_COUNTERS, **_GAUGES}
    for metric in registry.collect():
        for sample in metric.samples:
            field = names.get(sample.name)
            handler = sample.labels.get("handler")
            if field is None or handler is None:
                continue
            row = found.setdefault(handler, {})
            row[field] = row.get(field, 0.0) + sample.value
    return found


class Dashboard:
    """Answers the dashboard's paths; owns its sampler thread (start() / close())."""

    def __init__(
        self,
        settings: DashboardSettings,
        registry: CollectorRegistry,
        statuses: Statuses,
        *,
        control: Control | None = None,
        asyncapi: AsyncApi | None = None,
        expected_processes: int = 1,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self._asyncapi = asyncapi
        self._registry = registry
        self._statuses = statuses
        self._control = control if settings.control else None
        self._expected = expected_processes
        self._clock = clock
        # (time, {handler: totals}); appended by the sampler thread, read by requests.
        self._history: deque[tuple[float, dict[str, dict[str, float]]]] = deque(maxlen=HISTORY)
        self._thread = OwnedThread(self._sample, "kw-dashboard")

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Dashboard:
        self._history.append((self._clock(), totals(self._registry)))
        self._thread.start()
        return self

    def close(self) -> None:
        self._thread.stop()

    def _sample(self) -> None:
        while not self._thread.stopping.wait(SAMPLE_EVERY):
            try:
                self._history.append((self._clock(), totals(self._registry)))
            except Exception:  # a bad sample must not end the chart for good
                log.exception("dashboard sample failed")

    # -- HTTP --------------------------------------------------------------------------------

    def answer(self, request: Request) -> Reply | None:
        """The reply for a dashboard path, or None when the path is not the dashboard's."""
        path = request.path
        if path.startswith("/api/control/"):
            return self._control_request(request)
        if request.method != "GET":
            return None
        if path in _STATIC:
            name, kind = _STATIC[path]
            body = resources.files(__package__).joinpath("static", name).read_bytes()
            return 200, body, kind
        if path == "/api/status":
            return json_reply(200, self.status())
        if path == "/api/failures":
            return json_reply(200, self.failures())
        if path == ASYNCAPI_PATH and self._asyncapi is not None:
            return 200, self._asyncapi().encode(), "application/yaml; charset=utf-8"
        return None

    def status(self) -> dict[str, Any]:
        now = self._clock()
        statuses = self._statuses()
        current = totals(self._registry)
        history = [*self._history, (now, current)]
        processes = [{key: status.get(key) for key in _PROCESS_FIELDS} for status in statuses]
        states = {p["state"] for p in processes}
        if "draining" in states:
            state = "draining"
        elif len(processes) >= self._expected and states == {"ready"}:
            state = "ready"
        else:
            state = "starting"
        handlers = _handlers(statuses, current, history, now)
        throughput = _rates(history, "finished")
        return {
            "app": next((s.get("app") for s in statuses if s.get("app")), None),
            "time": now,
            "state": state,
            "control": self._control is not None,
            # Where the app's AsyncAPI document is served (a link on the page), or null.
            "asyncapi": ASYNCAPI_PATH if self._asyncapi is not None else None,
            "processes": processes,
            "throughput": {
                # msg/s over the latest interval (at most SAMPLE_EVERY seconds)
                "now": throughput[-1][1] if throughput else 0.0,
                "history": throughput,  # [[unix time, msg/s], ...] over 15 minutes
                "sample_seconds": SAMPLE_EVERY,
            },
            "errors_per_minute": _per_minute(history, "failed", now),
            "handlers": handlers,
            "partitions": sorted(
                (row for status in statuses for row in status.get("partitions", ())),
                key=lambda r: (r["handler"], r["topic"], r["partition"]),
            ),
        }

    def failures(self) -> dict[str, Any]:
        statuses = self._statuses()
        entries = [entry for status in statuses for entry in status.get("failures", ())]
        entries.sort(key=lambda e: e["time"], reverse=True)
        return {
            "failures": entries[:100],  # newest first
            "total": sum(int(status.get("failures_total", 0)) for status in statuses),
        }

    def _control_request(self, request: Request) -> Reply:
        action = request.path.removeprefix("/api/control/")
        headers, client = request.headers, request.client
        if self._control is None or action not in ACTIONS:
            # Off: the endpoints do not exist (the page shows no buttons either).
            return json_reply(404, {"error": "not found"})
        if request.method != "POST":
            return json_reply(405, {"error": "use POST"})
        if not self._authorized(headers):
            log.warning("dashboard action refused: no valid token", action=action, client=client)
            return json_reply(401, {"error": "a valid token is required (Authorization: Bearer)"})
        try:
            target = _target(action, json_body(request))
        except (ValueError, orjson.JSONDecodeError) as exc:
            return json_reply(400, {"error": str(exc)})
        operator = operator_name(headers)
        status, body = self._control({"action": action, **target})
        # Who (the client, and the name the page asks for), what and when (the log's time);
        # never the token.
        log.warning(
            "dashboard action",
            action=action,
            client=client,
            operator=operator,
            result=status,
            **target,
        )
        return json_reply(status, body)

    def _authorized(self, headers: Mapping[str, str]) -> bool:
        return authorized(self.settings.token, headers)


def authorized(token: SecretStr | None, headers: Mapping[str, str]) -> bool:
    """Whether the request carries `token` as `Authorization: Bearer <token>`."""
    if token is None:
        return False
    given = headers.get("authorization", "")
    scheme, _, value = given.partition(" ")
    if scheme.lower() != "bearer" or not value:
        return False
    # Constant time: the comparison must not tell how much of a guess was right.
    return hmac.compare_digest(value.strip().encode(), token.get_secret_value().encode())


def json_body(request: Request) -> dict[str, Any]:
    """An action's JSON object body (a few fields); ValueError when it is not one."""
    headers, read_body = request.headers, request.read_body
    length = int(headers.get("content-length") or 0)
    if length > _BODY_MAX:
        raise ValueError("body too large")
    request = orjson.loads(read_body(length) or b"{}")
    if not isinstance(request, dict):
        raise ValueError("the body must be a JSON object")
    return request


def operator_name(headers: Mapping[str, str]) -> str | None:
    """The name the page asks the operator for (X-Kafkaworker-Operator), for the log."""
    return headers.get("x-kafkaworker-operator", "")[:64] or None


_PROCESS_FIELDS = ("pid", "index", "started_at", "uptime_seconds", "rss_bytes", "threads", "state")


def _target(action: str, request: dict[str, Any]) -> dict[str, Any]:
    handler = request.get("handler")
    if not isinstance(handler, str) or not handler:
        raise ValueError("handler (a string) is required")
    if action in {"pause", "resume"}:
        topic, partition = request.get("topic"), request.get("partition")
        if not isinstance(topic, str) or not isinstance(partition, int):
            raise ValueError("topic (a string) and partition (an integer) are required")
        return {"handler": handler, "topic": topic, "partition": partition}
    return {"handler": handler}


def _handlers(
    statuses: list[dict[str, Any]],
    current: dict[str, dict[str, float]],
    history: list[tuple[float, dict[str, dict[str, float]]]],
    now: float,
) -> list[dict[str, Any]]:
    described: dict[str, dict[str, Any]] = {}
    breakers: dict[str, set[str]] = {}
    p99s: dict[str, list[float]] = {}
    for status in statuses:
        for handler in status.get("handlers", ()):
            described.setdefault(handler["name"], dict(handler))
            breakers.setdefault(handler["name"], set()).add(handler.get("breaker", "none"))
            p99 = handler.get("handler_seconds_p99")
            if p99 is not None:
                p99s.setdefault(handler["name"], []).append(p99)
    rows = []
    for name in sorted(described.keys() | current.keys()):
        row = dict(described.get(name, {"name": name}))
        counts = current.get(name, {})
        for field in (*_COUNTERS.values(), *_GAUGES.values()):
            row[field] = counts.get(field, 0.0)
        # Open anywhere is open: each process has its own breaker.
        seen = breakers.get(name, {"none"})
        row["breaker"] = next((b for b in ("held open", "open", "closed") if b in seen), "none")
        # Under --processes, the slowest process's p99: an upper bound of the whole's, which
        # the processes' separate samples cannot give exactly.
        row["handler_seconds_p99"] = max(p99s[name]) if name in p99s else None
        # Mean handler time over the last minute: from the counters' growth, since the hot
        # path keeps no per-message histogram (observability/metrics.py says why); the p99
        # comes from the calls the executors time one by one (slow handlers only).
        then = _at(history, now - 60)
        before = then[1].get(name, {}) if then else {}
        done = counts.get("finished", 0.0) - before.get("finished", 0.0)
        spent = counts.get("handler_seconds", 0.0) - before.get("handler_seconds", 0.0)
        row["handler_seconds_mean"] = spent / done if done > 0 else None
        rows.append(row)
    return rows


def _at(
    history: list[tuple[float, dict[str, dict[str, float]]]], when: float
) -> tuple[float, dict[str, dict[str, float]]] | None:
    """The latest sample at or before `when`, else the oldest."""
    found = None
    for sample in history:
        if sample[0] <= when or found is None:
            found = sample
        else:
            break
    return found


def _sum(sample: dict[str, dict[str, float]], field: str) -> float:
    return sum(row.get(field, 0.0) for row in sample.values())


def _rates(
    history: list[tuple[float, dict[str, dict[str, float]]]], field: str
) -> list[list[float]]:
    rates = []
    for (t0, s0), (t1, s1) in itertools.pairwise(history):
        if t1 - t0 >= 0.5:  # the current moment right after a sample says nothing yet
            grown = max(0.0, _sum(s1, field) - _sum(s0, field))
            rates.append([round(t1, 1), round(grown / (t1 - t0), 2)])
    return rates


def _per_minute(
    history: list[tuple[float, dict[str, dict[str, float]]]], field: str, now: float
) -> float:
    """How much `field` grew over the last minute (less when the history is younger: a
    worker that started 10 s ago shows its 10 s, not an extrapolation)."""
    then = _at(history, now - 60)
    if then is None:
        return 0.0
    return max(0.0, _sum(history[-1][1], field) - _sum(then[1], field))


def json_reply(status: int, body: Any) -> Reply:
    return status, orjson.dumps(body), "application/json"

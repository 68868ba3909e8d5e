"""FleetDashboard: the pages and JSON of `kafkaworker dashboard`, served by a MetricsServer.

GET  /                       the fleet page (static files under fleet/static/)
GET  /api/fleet              apps, processes (state, last_seen, handlers, partitions), holds
GET  /api/groups             consumer groups as the cluster tells them (fleet/cluster.py)
GET  /api/failures           the latest failures across the fleet, with tracebacks
GET  /api/audit              the latest commands: who, what, when
GET  /api/dlq                the DLQs the handlers declared
GET  /api/dlq/<topic>        a DLQ's latest records, decoded (fleet/explorer.py)
POST /api/commands/<action>  a command to the fleet (fleet/commands.py)
POST /api/dlq/replay         replay chosen records of a DLQ, or all of it

The POSTs exist only with dashboard.control (and then dashboard.token, sent as
`Authorization: Bearer`); without control they answer 404 and the page shows no buttons, as
the worker's own dashboard does. Every command is logged (warning `fleet command`: action,
target, operator, client address, id) and written to the audit topic; the token never is.

Owns the reader (its consumer and thread), the cluster watch (its admin client and thread)
and, with control, a producer for commands, audit entries and replays; close() stops them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from importlib import resources
from typing import Any

import orjson
import structlog

from kafkaworker.errors import KafkaWorkerError
from kafkaworker.fleet import explorer
from kafkaworker.fleet.cluster import ClusterWatch
from kafkaworker.fleet.commands import CommandRefused, command, sign
from kafkaworker.fleet.reader import FleetReader
from kafkaworker.fleet.topics import AUDIT, COMMANDS, ERRORS, REPORTS, ensure, fleet_topics
from kafkaworker.fleet.view import FleetView
from kafkaworker.observability.dashboard import (
    Reply,
    authorized,
    json_body,
    json_reply,
    operator_name,
)
from kafkaworker.observability.server import Request
from kafkaworker.ops import KafkaAdmin
from kafkaworker.producer import Producer
from kafkaworker.settings import Settings

log = structlog.get_logger("kafkaworker.fleet")

_STATIC = {
    "/": ("fleet", "fleet.html", "text/html; charset=utf-8"),
    "/fleet.js": ("fleet", "fleet.js", "text/javascript; charset=utf-8"),
    "/fleet.css": ("fleet", "fleet.css", "text/css; charset=utf-8"),
    # Shared with the worker dashboard: its styles and its DOM and formatting helpers.
    "/dashboard.css": ("dashboard", "dashboard.css", "text/css; charset=utf-8"),
    "/common.js": ("dashboard", "common.js", "text/javascript; charset=utf-8"),
}
_PACKAGES = {"fleet": __package__, "dashboard": "kafkaworker.observability.dashboard"}
DLQ_RECORDS = 100
# How long a command's write may take to be acknowledged before the request fails.
WRITE_TIMEOUT = 10.0


class FleetDashboard:
    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self._clock = clock
        self._control = settings.dashboard.control
        token = settings.dashboard.token
        self._token = token.get_secret_value() if self._control and token else None
        self._topics = fleet_topics(settings.fleet)
        self.view = FleetView(settings.fleet.retention)
        self.reader = FleetReader(settings, self.view, token=self._token, clock=clock)
        self.cluster = ClusterWatch(settings, lambda: self.view.groups(self._clock()), clock=clock)
        self._producer: Producer | None = None

    # -- lifecycle (the MetricsServer's) ----------------------------------------------------

    def start(self) -> FleetDashboard:
        needs = [(REPORTS, "READ"), (ERRORS, "READ"), (AUDIT, "READ")]
        if self._control:
            needs += [(COMMANDS, "READ"), (COMMANDS, "WRITE"), (AUDIT, "WRITE")]
        with KafkaAdmin(self.settings) as admin:
            ensure(admin, self.settings, needs)
        if self._control:
            self._producer = Producer(self.settings, client_id="kafkaworker.dashboard")
        self.reader.start()
        self.cluster.start()
        return self

    def close(self) -> None:
        self.cluster.close()
        self.reader.close()
        if self._producer is not None:
            self._producer.close(WRITE_TIMEOUT)

    @property
    def ready(self) -> bool:
        """Every report written before start-up is read."""
        return self.reader.caught_up.is_set()

    # -- HTTP ------------------------------------------------------------------------------

    def answer(self, request: Request) -> Reply | None:
        path = request.path
        if request.method == "POST" and (
            path.startswith("/api/commands/") or path == "/api/dlq/replay"
        ):
            return self._act(request)
        if request.method != "GET":
            return None
        if path in _STATIC:
            package, name, kind = _STATIC[path]
            body = resources.files(_PACKAGES[package]).joinpath("static", name).read_bytes()
            return 200, body, kind
        now = self._clock()
        if path == "/api/fleet":
            return json_reply(
                200, {**self.view.fleet(now), "control": self._control, "ready": self.ready}
            )
        if path == "/api/groups":
            return json_reply(200, {"groups": self.cluster.groups()})
        if path == "/api/failures":
            return json_reply(200, {"failures": self.view.failures()})
        if path == "/api/audit":
            return json_reply(200, {"audit": self.view.audit()})
        if path == "/api/dlq":
            return json_reply(200, {"dlqs": self.view.dlqs()})
        if path.startswith("/api/dlq/"):
            return self._dlq_records(path.removeprefix("/api/dlq/"))
        return None

    def _dlq_records(self, topic: str) -> Reply:
        if topic not in self.view.dlqs():
            # Not a generic topic reader: only what a handler declared as its DLQ.
            return json_reply(404, {"error": f"no handler reports {topic!r} as its dlq"})
        try:
            records = explorer.browse(self.settings, topic, DLQ_RECORDS, self.view.codec)
        except KafkaWorkerError as exc:
            return json_reply(502, {"error": str(exc)})
        return json_reply(200, {"topic": topic, "records": records})

    def _act(self, request: Request) -> Reply:
        path, headers, client = request.path, request.headers, request.client
        if not self._control or self._producer is None:
            return json_reply(404, {"error": "not found"})  # off: the endpoints do not exist
        what = (
            path.removeprefix("/api/commands/") if path.startswith("/api/commands/") else "replay"
        )
        if not authorized(self.settings.dashboard.token, headers):
            log.warning("fleet command refused: no valid token", action=what, client=client)
            return json_reply(401, {"error": "a valid token is required (Authorization: Bearer)"})
        operator = operator_name(headers)
        try:
            body = json_body(request)
            if what == "replay":
                return self._replay(body, operator, client)
            issued = command(what, body, operator=operator, client=client, issued_at=self._clock())
        except (ValueError, CommandRefused, orjson.JSONDecodeError) as exc:
            return json_reply(400, {"error": str(exc)})
        assert self._token is not None
        try:
            self._producer.send_sync(
                self._topics[COMMANDS].name, sign(issued, self._token), timeout=WRITE_TIMEOUT
            )
        except KafkaWorkerError as exc:
            return json_reply(502, {"error": f"the command was not written: {exc}"})
        self._audit(issued.as_json(), "written")
        self.cluster.refresh()
        return json_reply(202, {"accepted": issued.action, "id": issued.id})

    def _replay(self, body: dict[str, Any], operator: str | None, client: str) -> Reply:
        topic = body.get("topic")
        if not isinstance(topic, str) or topic not in self.view.dlqs():
            return json_reply(404, {"error": f"no handler reports {topic!r} as its dlq"})
        chosen = body.get("records")
        if body.get("all") is True:
            positions = None
        elif isinstance(chosen, list) and chosen and all(_position(p) for p in chosen):
            positions = [(int(p[0]), int(p[1])) for p in chosen]
        else:
            raise ValueError('give "records": [[partition, offset], ...] or "all": true')
        entry = {
            "id": f"replay-{int(self._clock() * 1000)}",
            "action": "replay",
            "target": {"topic": topic, "records": "all" if positions is None else positions},
            "operator": operator,
            "client": client,
            "issued_at": self._clock(),
        }
        try:
            result = explorer.replay(self.settings, topic, positions)
        except KafkaWorkerError as exc:
            self._audit(entry, f"failed: {exc}")
            return json_reply(502, {"error": str(exc)})
        self._audit(entry, f"replayed {result['replayed']}")
        return json_reply(200, result)

    def _audit(self, entry: dict[str, Any], result: str) -> None:
        """Who, what, when: in the log and on the audit topic (never the token)."""
        entry = {**entry, "result": result, "time": self._clock()}
        log.warning(
            "fleet command",
            action=entry["action"],
            target=entry["target"],
            operator=entry["operator"],
            client=entry["client"],
            id=entry["id"],
            result=result,
        )
        assert self._producer is not None
        try:
            self._producer.send_sync(
                self._topics[AUDIT].name, orjson.dumps(entry), timeout=WRITE_TIMEOUT
            )
        except KafkaWorkerError as exc:  # the log line above is the audit then
            log.error("the audit entry was not written", id=entry["id"], error=str(exc))


def _position(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
    )

"""The dashboard's pure parts, without a broker: the bounded failures buffer, the breaker's
operator override, the control endpoints' refusals (404 off, 401 without the token, 400 on a
bad body) and that the token never reaches a log line or a reply."""

from __future__ import annotations

from importlib import resources
from typing import Any

import orjson
import pytest
import structlog
from prometheus_client import CollectorRegistry

from kafkaworker.errors import ConfigError
from kafkaworker.message import Message
from kafkaworker.observability.dashboard import Dashboard
from kafkaworker.observability.server import Request
from kafkaworker.runtime.failures.policy import Action, CircuitBreaker, Decision
from kafkaworker.runtime.failures.recent import RecentFailures
from kafkaworker.settings import DashboardSettings, Settings

TOKEN = "s3cret-token-value"


def test_recent_failures_keep_the_last_100_as_plain_data() -> None:
    recent = RecentFailures()
    for offset in range(150):
        msg: Message[Any] = Message(
            "orders",
            {},
            partition=2,
            offset=offset,
            key=b"k",
            headers=[("trace", b"t-%d" % offset)],
        )
        try:
            raise ValueError(f"bad {offset}")
        except ValueError as exc:
            recent.add("h", "orders.dlq", msg, exc, Decision(Action.DEAD_LETTER, topic="x.dlq"))
    entries = recent.entries()
    assert recent.total == 150
    assert len(entries) == 100
    assert [e["offset"] for e in entries] == list(range(50, 150))
    last = entries[-1]
    assert last["error"] == "bad 149" and last["error_type"] == "builtins.ValueError"
    assert last["headers"] == [["trace", "t-149"]]
    assert last["dlq"] == "x.dlq" and last["decision"] == "dead_letter"
    assert 'raise ValueError(f"bad {offset}")' in last["traceback"]
    orjson.dumps(entries)  # plain data: no exception or frame kept


def test_an_operator_opened_breaker_stays_open_until_closed() -> None:
    now = [0.0]
    breaker = CircuitBreaker(
        threshold=0.5, window=10, min_messages=4, cooldown=5, clock=lambda: now[0]
    )
    assert breaker.force(True) == "opened"
    now[0] = 100.0
    assert breaker.update() is None and breaker.open  # no cooldown for a held breaker
    assert breaker.force(False) == "closed"
    assert not breaker.open and not breaker.held
    assert breaker.force(False) is None


def dashboard(control: bool, calls: list[dict[str, Any]]) -> Dashboard:
    settings = DashboardSettings(control=control, token=TOKEN if control else None)

    def carry_out(request: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        calls.append(request)
        return 202, {"accepted": request["action"], "pids": [1]}

    return Dashboard(settings, CollectorRegistry(), lambda: [], control=carry_out)


def post(board: Dashboard, action: str, body: Any, **headers: str) -> tuple[int, Any]:
    data = orjson.dumps(body)
    headers = {"content-length": str(len(data)), **headers}
    reply = board.answer(
        Request("POST", f"/api/control/{action}", headers, lambda n: data, "1.2.3.4:5")
    )
    assert reply is not None
    return reply[0], orjson.loads(reply[1])


def test_control_off_is_404_even_with_a_token() -> None:
    calls: list[dict[str, Any]] = []
    board = dashboard(False, calls)
    target = {"handler": "h", "topic": "t", "partition": 0}
    assert post(board, "pause", target, authorization=f"Bearer {TOKEN}")[0] == 404
    assert calls == []


def test_control_needs_the_token_and_a_valid_body() -> None:
    calls: list[dict[str, Any]] = []
    board = dashboard(True, calls)
    target = {"handler": "h", "topic": "t", "partition": 0}
    with structlog.testing.capture_logs() as logs:
        assert post(board, "pause", target)[0] == 401
        assert post(board, "pause", target, authorization="Bearer wrong")[0] == 401
        assert post(board, "pause", target, authorization=TOKEN)[0] == 401  # no scheme
        bad = post(board, "pause", {"handler": "h"}, authorization=f"Bearer {TOKEN}")
        assert bad[0] == 400 and "partition" in bad[1]["error"]
        assert post(board, "skip", target, authorization=f"Bearer {TOKEN}")[0] == 404
        assert calls == []
        status, body = post(
            board,
            "pause",
            target,
            authorization=f"Bearer {TOKEN}",
            **{"x-kafkaworker-operator": "ann"},
        )
    assert (status, body["accepted"]) == (202, "pause")
    assert calls == [{"action": "pause", **target}]
    logged = [entry for entry in logs if entry["event"] == "dashboard action"]
    assert logged[0]["operator"] == "ann" and logged[0]["client"] == "1.2.3.4:5"
    assert TOKEN not in repr(logs)
    assert TOKEN not in orjson.dumps(board.status()).decode()


def test_control_without_a_token_is_refused_at_start_up() -> None:
    with pytest.raises((ConfigError, ValueError), match=r"dashboard\.token"):
        Settings.model_validate({"dashboard": {"control": True}})
    assert TOKEN not in repr(DashboardSettings(control=True, token=TOKEN))


def test_the_metrics_server_serves_the_dashboard_only_when_given_one() -> None:
    import urllib.error  # noqa: PLC0415
    import urllib.request  # noqa: PLC0415

    from kafkaworker.observability.health import Health  # noqa: PLC0415
    from kafkaworker.observability.server import MetricsServer  # noqa: PLC0415

    def status(port: int, path: str, method: str = "GET") -> int:
        request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
        try:
            with urllib.request.urlopen(request, data=b"{}" if method == "POST" else None) as r:
                return int(r.status)
        except urllib.error.HTTPError as exc:
            return exc.code

    registry = CollectorRegistry()
    board = Dashboard(DashboardSettings(), registry, lambda: [])
    for given, page in ((None, 404), (board, 200)):
        with MetricsServer("127.0.0.1", 0, registry, lambda: Health(True, True), given) as server:
            assert status(server.port, "/") == page
            assert status(server.port, "/api/status") == page
            assert status(server.port, "/api/control/pause", "POST") == 404
            assert status(server.port, "/metrics") == 200
            assert status(server.port, "/healthz") == 200


def test_the_dashboard_serves_the_asyncapi_document_it_is_given() -> None:
    """GET /asyncapi.yaml answers the document (made when asked for) and /api/status says
    where it is, for the page's link; without one, 404 and null."""
    import urllib.error  # noqa: PLC0415
    import urllib.request  # noqa: PLC0415

    import yaml  # noqa: PLC0415

    from apps.orders.app import app  # noqa: PLC0415
    from kafkaworker.asyncapi import build, render  # noqa: PLC0415
    from kafkaworker.observability.health import Health  # noqa: PLC0415
    from kafkaworker.observability.server import MetricsServer  # noqa: PLC0415

    def get(port: int, path: str) -> tuple[int, str, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}") as reply:
                return int(reply.status), reply.headers["Content-Type"], reply.read()
        except urllib.error.HTTPError as exc:
            return exc.code, "", b""

    registry = CollectorRegistry()
    made: list[int] = []

    def document() -> str:
        made.append(1)
        return render(build(app, Settings.model_validate({})))

    with_document = Dashboard(DashboardSettings(), registry, lambda: [], asyncapi=document)
    without = Dashboard(DashboardSettings(), registry, lambda: [])
    assert made == []  # nothing is made until asked for
    for board, expected in ((with_document, "/asyncapi.yaml"), (without, None)):
        health = lambda: Health(True, True)  # noqa: E731
        with MetricsServer("127.0.0.1", 0, registry, health, board) as server:
            status, kind, body = get(server.port, "/asyncapi.yaml")
            assert orjson.loads(get(server.port, "/api/status")[2])["asyncapi"] == expected
        if expected is None:
            assert status == 404
            continue
        assert (status, kind) == (200, "application/yaml; charset=utf-8")
        assert set(yaml.safe_load(body)["channels"]) == {"orders", "orders.dlq", "orders.accepted"}
    assert made == [1]


def test_each_handler_row_shows_its_processing_guarantee() -> None:
    """The handlers table has a guarantee column, filled from the processes' statuses."""
    statuses = [
        {"handlers": [{"name": "copy", "guarantee": "exactly_once"}]},
        {"handlers": [{"name": "audit", "guarantee": "at_least_once"}]},
    ]
    board = Dashboard(DashboardSettings(), CollectorRegistry(), lambda: statuses)
    rows = {row["name"]: row["guarantee"] for row in board.status()["handlers"]}
    assert rows == {"copy": "exactly_once", "audit": "at_least_once"}
    static = resources.files("kafkaworker.observability.dashboard").joinpath("static")
    page = static.joinpath("index.html").read_text()
    header = page.split('<tbody id="handlers"')[0].rsplit("<thead>", 1)[1]
    assert ">guarantee</th>" in header
    script = static.joinpath("dashboard.js").read_text()
    assert '"data-field": "guarantee" }, h.guarantee)' in script
    # The empty table's one cell spans every column.
    assert f')), {header.count("<th")}, "no handler reported yet")' in script

"""A process's report (kafkaworker/fleet/report.py) and the commands carried out in a process
(fleet/control.py), from a process status as ProcessStatus.status() gives it."""

from __future__ import annotations

from typing import Any

import orjson

from kafkaworker.fleet import report
from kafkaworker.fleet.commands import command
from kafkaworker.fleet.control import FleetControl

IDENTITY = report.Identity("orders:h:7:abcd", "orders", "h", 7, 100.0)


def status(
    partitions: int = 4, assigned_at: float = 1.0, breaker: str = "closed"
) -> dict[str, Any]:
    return {
        "state": "ready",
        "index": None,
        "rss_bytes": 50_000_000,
        "threads": 20,
        "failures_total": 0,
        "failures": [],
        "handlers": [
            {
                "name": "handle",
                "group": "orders",
                "topics": ["orders"],
                "mode": "stream",
                "ordering": "key",
                "concurrency": 8,
                "dlq": "orders.dlq",
                "codec": "json",
                "guarantee": "at_least_once",
                "breaker": breaker,
            },
        ],
        "partitions": [
            {
                "handler": "handle",
                "topic": "orders",
                "partition": p,
                "committed": 1000 + p,
                "log_end": 1010 + p,
                "lag": 10,
                "lag_seconds": 0.5,
                "in_flight": 3,
                "paused": False,
                "pause_reason": None,
                "assigned_at": assigned_at,
                "pid": 7,
            }
            for p in range(partitions)
        ],
    }


def test_a_report_says_who_what_and_how_fast_in_about_a_kilobyte() -> None:
    first = report.Sample(10.0, {"handle": {"finished": 100.0, "failed": 1.0}})
    counters = {"handle": {"finished": 600.0, "failed": 6.0, "in_flight": 3.0, "consumed": 610}}
    built = report.build(
        IDENTITY, status(), counters, now=15.0, interval=5.0, version="0.1.0", previous=first
    )
    who = (built["id"], built["app"], built["host"], built["pid"])
    assert who == ("orders:h:7:abcd", "orders", "h", 7)
    assert built["state"] == "ready" and built["started_at"] == 100.0
    [handler] = built["handlers"]
    assert handler["guarantee"] == "at_least_once" and handler["ordering"] == "key"
    assert handler["rates"]["finished"] == 100.0  # 500 in 5 s
    assert handler["rates"]["failed"] == 1.0
    assert handler["finished"] == 600 and handler["in_flight"] == 3
    assert [p["partition"] for p in built["partitions"]] == [0, 1, 2, 3]
    assert "pid" not in built["partitions"][0]  # the report says it once
    assert "failures" not in built
    size = len(orjson.dumps(built))
    assert 800 < size < 2000, size
    final = report.build(IDENTITY, status(), counters, now=16.0, interval=5.0, version="x",
                         state="stopped")  # fmt: skip
    assert final["state"] == "stopped"


class Status:
    """A process's status and operator actions, as FleetControl asks ProcessStatus."""

    def __init__(self) -> None:
        self.now = status()
        self.actions: list[tuple[str, ...]] = []

    def status(self) -> dict[str, Any]:
        return self.now

    def control(self, request: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        self.actions.append(tuple(str(v) for v in request.values()))
        return 202, {}


def fleet_control(process: Status, stops: list[bool]) -> FleetControl:
    return FleetControl(IDENTITY, process, lambda: stops.append(True))  # type: ignore[arg-type]


def issue(action: str, at: float, **target: Any) -> Any:
    return command(action, target, operator=None, client=None, issued_at=at)


def test_a_fleet_pause_is_held_again_after_a_rebalance_and_released_by_resume() -> None:
    process, stops = Status(), []
    control = fleet_control(process, stops)
    control.receive(issue("pause", 200.0, topic="orders", partition=1), process.now)
    assert process.actions == [("pause", "handle", "orders", "1")]
    control.reconcile(process.now)
    assert len(process.actions) == 1  # held already
    process.now = status(assigned_at=2.0)  # revoked and assigned again: a new assignment
    control.reconcile(process.now)
    assert process.actions[-1] == ("pause", "handle", "orders", "1")
    control.receive(issue("resume", 201.0, topic="orders"), process.now)
    assert process.actions[-1] == ("resume", "handle", "orders", "1")
    assert len(process.actions) == 3
    assert [a["action"] for a in control.acknowledged] == ["pause", "resume"]


def test_quiet_holds_every_partition_and_stop_stops_once() -> None:
    process, stops = Status(), []
    control = fleet_control(process, stops)
    control.receive(issue("quiet", 200.0, process=IDENTITY.id), process.now)
    assert sorted(a[3] for a in process.actions) == ["0", "1", "2", "3"]
    control.receive(issue("stop", 201.0, process=IDENTITY.id), process.now)
    control.reconcile(process.now)
    assert stops == [True]


def test_commands_read_at_start_up_are_carried_out_together_and_breakers_once() -> None:
    process, stops = Status(), []
    control = fleet_control(process, stops)
    control.receive(issue("pause", 1.0, topic="orders"), None)  # history, before catching up
    control.receive(issue("resume", 2.0, topic="orders"), None)
    control.receive(issue("open_breaker", 3.0, handler="handle"), None)
    assert process.actions == []
    control.reconcile(process.now)
    assert process.actions == [("open_breaker", "handle")]
    control.reconcile(process.now)
    assert process.actions == [("open_breaker", "handle")]
    assert not control.acknowledged  # issued before this process started: not its to list

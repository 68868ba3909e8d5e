"""FleetView (kafkaworker/fleet/view.py): a process is gone after three missed reports and
not before, stopped at once after a clean shutdown; apps add up their live processes; the
history is per app, from complete buckets only."""

from __future__ import annotations

from typing import Any

from kafkaworker.fleet.view import BUCKET, GRACE, FleetView


def report(
    process: str, app: str = "orders", state: str = "ready", **changes: Any
) -> dict[str, Any]:
    found: dict[str, Any] = {
        "id": process,
        "app": app,
        "host": "h",
        "pid": 1,
        "started_at": 0.0,
        "interval": 5.0,
        "state": state,
        "handlers": [
            {
                "name": "handle",
                "group": app,
                "mode": "stream",
                "breaker": "closed",
                "dlq": f"{app}.dlq",
                "codec": "json",
                "in_flight": 2,
                "finished": 10,
                "rates": {"finished": 4.0, "failed": 1.0, "dead_lettered": 0.0},
            }
        ],
        "partitions": [
            {"handler": "handle", "topic": app, "partition": 0, "lag": 5, "paused": False}
        ],
    }
    found.update(changes)
    return found


def states(view: FleetView, now: float) -> dict[str, str]:
    return {p["id"]: p["state"] for p in view.fleet(now)["processes"]}


def test_a_silent_process_is_gone_after_three_missed_reports() -> None:
    view = FleetView()
    view.add_report(report("a"), seen_at=100.0)
    assert states(view, 100.0 + 3 * 5.0 + GRACE) == {"a": "ready"}
    assert states(view, 100.0 + 3 * 5.0 + GRACE + 0.1) == {"a": "gone"}
    # Its interval is the report's own: a process reporting every 60 s is not gone at 16 s.
    view.add_report(report("b", interval=60.0), seen_at=100.0)
    assert states(view, 117.0)["b"] == "ready"


def test_a_clean_shutdown_is_shown_at_once_and_an_older_report_changes_nothing() -> None:
    view = FleetView()
    view.add_report(report("a"), seen_at=100.0)
    view.add_report(report("a", state="stopped"), seen_at=101.0)
    view.add_report(report("a", state="ready"), seen_at=99.0)  # read late
    [process] = view.fleet(101.5)["processes"]
    assert (process["state"], process["last_seen"]) == ("stopped", 101.0)
    view.forget("a")  # a tombstone
    assert view.fleet(101.5)["processes"] == []


def test_apps_add_up_their_live_processes_and_their_partitions() -> None:
    view = FleetView()
    view.add_report(report("a1"), seen_at=100.0)
    opened = report("a2")
    opened["handlers"][0]["breaker"] = "open"
    view.add_report(opened, seen_at=100.0)
    view.add_report(report("a3"), seen_at=50.0)  # gone by 100
    view.add_report(report("b1", app="billing"), seen_at=100.0)
    fleet = view.fleet(101.0)
    apps = {a["name"]: a for a in fleet["apps"]}
    assert set(apps) == {"orders", "billing"}
    orders = apps["orders"]
    assert orders["processes"] == 3
    assert orders["states"] == {"ready": 2, "gone": 1}
    [handler] = orders["handlers"]
    assert handler["processes"] == 2 and handler["in_flight"] == 4
    assert handler["rates"]["finished"] == 8.0
    assert handler["breaker"] == "open"  # open anywhere is open
    assert orders["lag"] == 10
    # Partitions of live processes only, each with its owner.
    owners = [(p["app"], p["process"]) for p in fleet["partitions"]]
    assert owners == [("billing", "b1"), ("orders", "a1"), ("orders", "a2")]
    assert view.groups(101.0) == ["billing", "orders"]
    assert view.dlqs()["billing.dlq"]["handler"] == "handle"
    assert view.codec("orders", "handle") == "json"
    assert view.codec("orders", "nope") is None


def test_history_sums_processes_per_bucket_and_leaves_out_the_filling_one() -> None:
    view = FleetView()
    start = 1000 * BUCKET
    for at in (0.0, 5.0):  # two reports of each process in the first bucket
        view.add_report(report("a1"), seen_at=start + at)
        view.add_report(report("a2"), seen_at=start + at)
    view.add_report(report("a1"), seen_at=start + BUCKET + 1)
    history = view.fleet(start + BUCKET + 2)["apps"][0]["history"]
    assert history == [[start, 8.0, 2.0, 0.0]]  # the second bucket is still filling


def test_a_process_is_forgotten_after_the_retention_of_its_reports() -> None:
    view = FleetView(retention=600.0)
    view.add_report(report("a", state="stopped"), seen_at=100.0)
    view.add_report(report("b", app="billing"), seen_at=100.0)
    view.add_report(report("b", app="billing"), seen_at=650.0)
    assert sorted(p["id"] for p in view.fleet(700.0)["processes"]) == ["a", "b"]
    fleet = view.fleet(701.0)  # a's last report is 601 s old
    assert [p["id"] for p in fleet["processes"]] == ["b"]
    assert [a["name"] for a in fleet["apps"]] == ["billing"]

"""The dashboard's JSON API and static files against real worker processes and the real broker:
the numbers equal /metrics, partitions show lag that falls to 0 with the committed position at
the log end, dead-lettered records appear in the recent failures with their traceback and
headers, and under --processes 2 the supervisor shows both children."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.dashboard.conftest import Worker, send, wait_for
from tests.metrics_support import total

pytestmark = pytest.mark.kafka

HANDLER = "handle_order"


def settled(worker: Worker, finished: int, dead_lettered: int) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        row = worker.handler()
        ok = row.get("finished") == finished and row.get("dead_lettered") == dead_lettered
        return row if ok else None

    return wait_for(done, 60, f"{finished} finished, {dead_lettered} dead-lettered")  # type: ignore[no-any-return]


def test_status_and_failures_match_metrics(
    kafka_bootstrap: str, topic: Callable[[int], str], worker: Callable[..., Worker]
) -> None:
    name = topic(2)
    one = worker(name)
    one.wait_ready()
    send(kafka_bootstrap, name, [{"id": i} for i in range(15)], partition=0)
    send(kafka_bootstrap, name, [{"id": i} for i in range(15, 30)], partition=1)
    send(
        kafka_bootstrap,
        name,
        [{"id": 100, "fail": True}, {"id": 101, "fail": True}],
        headers=[("trace-id", b"abc-123")],
    )
    row = settled(one, 32, 2)
    port = one.port
    assert row["finished"] == total(port, "kafkaworker_messages_finished_total", handler=HANDLER)
    assert row["failed"] == total(port, "kafkaworker_handler_failures_total", handler=HANDLER)
    assert row["failed"] == 4  # two records, one retry each
    assert row["dead_lettered"] == total(port, "kafkaworker_dead_lettered_total", handler=HANDLER)
    assert row["topics"] == [name]
    assert row["group"] == f"dash-{name}"
    assert (row["mode"], row["ordering"], row["breaker"]) == ("stream", "partition", "closed")
    assert row["guarantee"] == "at_least_once"
    assert row["dlq"] == f"{name}.dlq"

    # Partitions: both assigned here, committed at the log end once everything is finished.
    def caught_up() -> list[dict[str, Any]] | None:
        rows = one.status()["partitions"]
        done = all(r["lag"] == 0 and r["committed"] == r["log_end"] for r in rows)
        return rows if len(rows) == 2 and done else None

    rows = wait_for(caught_up, 30, "both partitions caught up")
    assert sum(r["log_end"] for r in rows) == 32
    assert {r["pid"] for r in rows} == {one.process.pid}
    assert not any(r["paused"] for r in rows)

    status = one.status()
    assert status["app"] == f"dash-{name}"
    assert status["state"] == "ready"
    assert status["control"] is False
    [process] = status["processes"]
    assert process["pid"] == one.process.pid
    assert process["rss_bytes"] > 10_000_000
    assert process["threads"] > 3

    failures = one.failures()
    assert failures["total"] == 4
    entries = failures["failures"]
    assert [e["time"] for e in entries] == sorted((e["time"] for e in entries), reverse=True)
    final = [e for e in entries if e["decision"] == "dead_letter"]
    assert sorted(e["error"] for e in final) == ["order 100 is broken", "order 101 is broken"]
    for entry in final:
        assert entry["error_type"] == "tests.dashboard.dashapp.BrokenOrderError"
        assert entry["handler"] == HANDLER and entry["topic"] == name
        assert entry["attempt"] == 2
        assert entry["key"].startswith("customer-")
        assert ["trace-id", "abc-123"] in entry["headers"]
        assert entry["dlq"] == f"{name}.dlq"
        assert 'raise BrokenOrderError(f"order' in entry["traceback"]
        assert entry["traceback"].rstrip().endswith("is broken")


def test_a_queue_mode_handler_shows_its_counts_and_failures_and_no_partitions(
    kafka_bootstrap: str, topic: Callable[[int], str], worker: Callable[..., Worker]
) -> None:
    name = topic(1)
    one = worker(name, DASH_MODE="queue")
    one.wait_ready()
    send(kafka_bootstrap, name, [*({"id": i} for i in range(10)), {"id": 100, "fail": True}])

    def done() -> dict[str, Any] | None:
        row = one.handler()
        return row if row.get("dead_lettered") == 1 and row.get("finished", 0) >= 10 else None

    row = wait_for(done, 90, "10 finished and one dead-lettered in queue mode")
    port = one.port
    assert row["finished"] == total(port, "kafkaworker_messages_finished_total", handler=HANDLER)
    assert row["failed"] == 2  # released after the first delivery, dead-lettered after the 2nd
    assert (row["mode"], row["ordering"], row["breaker"]) == ("queue", "none", "none")
    assert row["group"] == f"dash-{name}"
    # A share group has no assignment and no committed offsets: no partition rows.
    assert one.status()["partitions"] == []
    entries = [e for e in one.failures()["failures"] if e["error"] == "order 100 is broken"]
    assert [e["attempt"] for e in entries] == [2, 1]  # newest first
    assert entries[0]["decision"] == "dead_letter"
    assert entries[0]["dlq"] == f"{name}.dlq"


def test_lag_appears_and_falls_to_zero(
    kafka_bootstrap: str, topic: Callable[[int], str], worker: Callable[..., Worker]
) -> None:
    name = topic(1)
    one = worker(name, DASH_SLEEP="0.01")
    one.wait_ready()
    send(kafka_bootstrap, name, [{"id": i} for i in range(400)])  # about 4 s of work

    def lag() -> int:
        rows = one.status()["partitions"]
        return rows[0]["lag"] or 0 if rows else 0

    assert wait_for(lambda: lag() > 0, 20, "lag above 0") is True
    wait_for(lambda: lag() == 0 and one.handler().get("finished") == 400, 60, "lag back to 0")
    time_lag = one.status()["partitions"][0]["lag_seconds"]
    assert time_lag == 0
    # A 10 ms handler is timed call by call: its p99 over the last minute is about 10 ms.
    p99 = one.handler()["handler_seconds_p99"]
    assert p99 is not None and 0.009 <= p99 < 0.5, p99


def test_supervisor_aggregates_two_processes(
    kafka_bootstrap: str, topic: Callable[[int], str], worker: Callable[..., Worker]
) -> None:
    name = topic(4)
    two = worker(name, processes=2)
    two.wait_ready()

    def both() -> list[dict[str, Any]] | None:
        status = two.status()
        pids = {p["pid"] for p in status["processes"]}
        owners = {r["pid"] for r in status["partitions"]}
        ok = len(pids) == 2 and owners == pids and len(status["partitions"]) == 4
        return status["partitions"] if ok else None

    wait_for(both, 60, "two processes owning the 4 partitions")
    send(kafka_bootstrap, name, [{"id": i} for i in range(40)])
    send(kafka_bootstrap, name, [{"id": 200, "fail": True}], partition=0)
    send(kafka_bootstrap, name, [{"id": 201, "fail": True}], partition=3)
    row = settled(two, 42, 2)
    port = two.port
    assert row["finished"] == total(port, "kafkaworker_messages_finished_total", handler=HANDLER)
    assert row["failed"] == total(port, "kafkaworker_handler_failures_total", handler=HANDLER)
    assert row["dead_lettered"] == total(port, "kafkaworker_dead_lettered_total", handler=HANDLER)

    def failures_of_both() -> dict[str, Any] | None:
        found = two.failures()
        return found if found["total"] == 4 else None

    found = failures_of_both() or wait_for(failures_of_both, 10, "both children's failures")
    owners = {
        r["partition"]: r["pid"] for r in two.status()["partitions"] if r["partition"] in (0, 3)
    }
    assert {(e["partition"], e["pid"]) for e in found["failures"]} == set(owners.items())
    assert two.status()["state"] == "ready"

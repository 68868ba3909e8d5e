"""The fleet end to end on the real broker, through `kafkaworker dashboard`'s JSON API: workers
(in this process, one Runner each) report, the dashboard shows every app and process and a
clean shutdown at once; commands need control and the token, reach every process within
seconds and hold a topic across rebalances; a command not signed with the workers' token, or
written again long after it was issued, is not obeyed; quiet and stop; the cluster's own lag;
the DLQ explorer decodes a failed record and replays it to its source, where it is handled;
every command is audited, and the token is nowhere to be read."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer

from kafkaworker import App, Message
from kafkaworker.fleet.commands import command, sign
from kafkaworker.runtime.runner import Runner
from kafkaworker.settings import Settings
from tests.conftest import TopicFactory
from tests.fleet.conftest import TOKEN, DashboardProcess, fleet_settings, processes
from tests.metrics_support import get
from tests.support import make_settings, running, wait_until

pytestmark = pytest.mark.kafka


class Recorder:
    """A handler's calls, and a switch that makes records marked "fail" fail (a bug, until
    it is fixed)."""

    def __init__(self) -> None:
        self.handled: list[tuple[str, int, int, Any, list[tuple[str, bytes | None]]]] = []
        self.failing = threading.Event()
        self.failing.set()

    def app(self, name: str, *topics: str, dlq: str | None = None) -> App:
        app = App(name)

        @app.handler(list(topics), dlq=dlq, retries=0)
        def handle(msg: Message[Any]) -> None:
            if msg.value.get("fail") and self.failing.is_set():
                raise ValueError(f"order {msg.value['id']} is broken")
            self.handled.append((msg.topic, msg.partition, msg.offset, msg.value, msg.headers))

        return app

    def count(self, topic: str) -> int:
        return sum(1 for h in self.handled if h[0] == topic)


def worker_settings(bootstrap: str, fleet: dict[str, Any]) -> Settings:
    return make_settings(
        bootstrap, fleet=fleet, dashboard={"token": TOKEN}, log_level="INFO", shutdown_timeout=5
    )


def send(bootstrap: str, topic: str, values: list[dict[str, Any]], partition: int = -1) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for value in values:
        producer.produce(topic, orjson.dumps(value), partition=partition)
    assert producer.flush(30) == 0


@contextmanager
def workers(*runs: tuple[App, Settings]) -> Iterator[list[Runner]]:
    with ExitStack() as stack:
        yield [stack.enter_context(running(app, settings)) for app, settings in runs]


def partitions(dashboard: DashboardProcess, topic: str) -> list[dict[str, Any]]:
    return [p for p in dashboard.fleet()["partitions"] if p["topic"] == topic]


def test_every_app_and_process_is_shown_and_a_clean_stop_at_once(
    kafka_bootstrap: str, new_topic: TopicFactory, fleet_suffix: str, dashboard: Any
) -> None:
    fleet = fleet_settings(fleet_suffix)
    orders, billing = new_topic(2), new_topic(1)
    recorder = Recorder()
    settings = worker_settings(kafka_bootstrap, fleet)
    one = dashboard(fleet)
    with workers((recorder.app(f"orders-{fleet_suffix}", orders), settings)):
        billing_app = recorder.app(f"billing-{fleet_suffix}", billing, dlq=f"{billing}.dlq")
        with running(billing_app, settings):

            def both_ready() -> list[dict[str, Any]] | None:
                found = one.fleet()["processes"]
                ready = [p for p in found if p["state"] == "ready" and p["partitions"]]
                return found if len(ready) == 2 else None

            shown = wait_until(both_ready, 30, "both processes ready, with partitions")
            fleet_json = one.fleet()
            assert sorted(a["name"] for a in fleet_json["apps"]) == [
                f"billing-{fleet_suffix}",
                f"orders-{fleet_suffix}",
            ]
            for process in shown:
                for field in ("app", "host", "pid", "state", "last_seen", "handlers", "partitions"):
                    assert field in process, field
                assert process["pid"] > 0 and process["last_seen"] <= time.time() + 1
                [handler] = process["handlers"]
                assert handler["guarantee"] == "at_least_once"
                assert handler["mode"] == "stream" and handler["codec"] == "json"
            billing_process = next(p for p in shown if p["app"].startswith("billing"))
            assert billing_process["handlers"][0]["dlq"] == f"{billing}.dlq"
            assert {p["partition"] for p in partitions(one, orders)} == {0, 1}
            assert one.api("/api/dlq")["dlqs"][f"{billing}.dlq"]["codec"] == "json"
        # The billing worker stopped cleanly: its final report says so, no waiting.
        stopped = wait_until(
            lambda: processes(one, app=f"billing-{fleet_suffix}", state="stopped"),
            5,
            "the billing process shown stopped",
        )
        assert stopped[0]["id"] == billing_process["id"]
        assert [p["state"] for p in processes(one, app=f"orders-{fleet_suffix}")] == ["ready"]


def test_commands_need_control_and_the_token_which_is_never_shown(
    kafka_bootstrap: str, new_topic: TopicFactory, fleet_suffix: str, dashboard: Any
) -> None:
    fleet = fleet_settings(fleet_suffix)
    off = dashboard(fleet, control=False)
    assert off.post("/api/commands/pause", {"topic": "t"})[0] == 404
    assert off.post("/api/dlq/replay", {"topic": "t", "all": True})[0] == 404
    assert off.fleet()["control"] is False

    on = dashboard(fleet)
    assert on.post("/api/commands/pause", {"topic": "t"}, token=None)[0] == 401
    assert on.post("/api/commands/pause", {"topic": "t"}, token="guess")[0] == 401
    assert on.post("/api/dlq/replay", {"topic": "t", "all": True}, token="guess")[0] == 401
    status, body = on.post("/api/commands/pause", {"partition": 1})
    assert (status, body["error"]) == (
        400,
        "pause needs a topic (and a partition, or the whole topic)",
    )
    assert on.post("/api/commands/explode", {"topic": "t"})[0] == 400
    issued = on.command("pause", topic="t", partition=1)
    audit = wait_until(lambda: on.api("/api/audit")["audit"], 10, "the audit entry")
    assert audit[0]["id"] == issued
    assert (audit[0]["operator"], audit[0]["action"]) == ("ann", "pause")
    assert audit[0]["target"] == {"topic": "t", "partition": 1}
    assert audit[0]["client"].startswith("127.0.0.1:")
    assert "fleet command refused: no valid token" in on.output()
    for shown in (on.output(), on.api("/api/fleet"), on.api("/api/audit"), off.output()):
        assert TOKEN not in str(shown)
    status, page = get(on.port, "/")
    assert status == 200 and TOKEN.encode() not in page


def test_a_topic_paused_across_the_fleet_stays_paused_until_resumed(
    kafka_bootstrap: str, new_topic: TopicFactory, fleet_suffix: str, dashboard: Any
) -> None:
    """Every process holds the topic's partitions, and so does a process that joins later
    (a rebalance hands it some). Not tested here because not promised: a partition handed over
    with records waiting is held within ~2 s of its assignment, not at it (docs/fleet.md)."""
    fleet = fleet_settings(fleet_suffix)
    held, flowing = new_topic(4), new_topic(1)
    recorder = Recorder()
    app_name = f"orders-{fleet_suffix}"
    settings = worker_settings(kafka_bootstrap, fleet)
    one = dashboard(fleet)

    def owned_by(count: int) -> bool:
        rows = partitions(one, held)
        return len(rows) == 4 and len({p["process"] for p in rows}) == count

    def all_held() -> bool:
        return all(p["pause_reason"] == "operator" for p in partitions(one, held))

    with workers(
        (recorder.app(app_name, held, flowing), settings),
        (recorder.app(app_name, held, flowing), settings),
    ):
        wait_until(lambda: owned_by(2), 60, "the topic's 4 partitions owned by 2 processes")
        one.command("pause", topic=held)
        wait_until(all_held, 10, "every partition of the topic held, in both processes")
        with running(recorder.app(app_name, held, flowing), settings):
            wait_until(lambda: owned_by(3) and all_held(), 60, "a third process owning some, held")
            assert [h["target"] for h in one.fleet()["holds"]] == [{"topic": held}]
            send(kafka_bootstrap, held, [{"id": i} for i in range(40)])
            send(kafka_bootstrap, flowing, [{"id": i} for i in range(10)])
            # The same handlers, on the topic not paused: once its records are handled, the
            # held topic's had every chance to be consumed too.
            wait_until(lambda: recorder.count(flowing) == 10, 30, "the other topic handled")
            assert recorder.count(held) == 0
            one.command("resume", topic=held)
            wait_until(lambda: recorder.count(held) == 40, 30, "the held topic's records handled")
        assert one.fleet()["holds"] == []


def test_commands_not_signed_with_the_token_or_written_again_are_not_obeyed(
    kafka_bootstrap: str, new_topic: TopicFactory, fleet_suffix: str, dashboard: Any
) -> None:
    fleet = fleet_settings(fleet_suffix)
    topic = new_topic(3)
    recorder = Recorder()
    one = dashboard(fleet)
    settings = worker_settings(kafka_bootstrap, fleet)
    with running(recorder.app(f"orders-{fleet_suffix}", topic), settings):
        wait_until(lambda: len(partitions(one, topic)) == 3, 30, "the partitions owned")
        producer = Producer({"bootstrap.servers": kafka_bootstrap})
        forged = command(
            "pause",
            {"topic": topic, "partition": 0},
            operator="mallory",
            client=None,
            issued_at=time.time(),
        )
        producer.produce(fleet["commands_topic"], sign(forged, "not-the-token"))
        # Correctly signed, but issued two minutes before it is written (copied, sent again).
        replayed = command(
            "pause",
            {"topic": topic, "partition": 1},
            operator="ann",
            client=None,
            issued_at=time.time() - 120,
        )
        producer.produce(fleet["commands_topic"], sign(replayed, TOKEN))
        assert producer.flush(10) == 0
        # A real command after them: once it is carried out, the two before were read.
        one.command("pause", topic=topic, partition=2)
        wait_until(
            lambda: (
                {p["partition"]: p["pause_reason"] for p in partitions(one, topic)}.get(2)
                == "operator"
            ),
            10,
            "partition 2 paused",
        )
        reasons = {p["partition"]: p["pause_reason"] for p in partitions(one, topic)}
        assert reasons[0] is None and reasons[1] is None


def test_quiet_holds_every_partition_and_stop_shuts_the_process_down(
    kafka_bootstrap: str, new_topic: TopicFactory, fleet_suffix: str, dashboard: Any
) -> None:
    fleet = fleet_settings(fleet_suffix)
    topic = new_topic(2)
    recorder = Recorder()
    one = dashboard(fleet)
    app = recorder.app(f"orders-{fleet_suffix}", topic)
    with running(app, worker_settings(kafka_bootstrap, fleet)) as runner:
        [process] = wait_until(lambda: processes(one, state="ready"), 30, "the process ready")
        one.command("quiet", process=process["id"])
        wait_until(
            lambda: (
                [p["pause_reason"] for p in partitions(one, topic)] == ["operator"] * 2
                and processes(one)[0].get("quiet")
            ),
            10,
            "every partition held, the process quiet",
        )
        one.command("stop", process=process["id"])
        # The process stops by itself (running() then sees it exit 0).
        wait_until(
            lambda: runner.handlers and not any(h.alive for h in runner.handlers),
            30,
            "the worker stopped",
        )
        wait_until(lambda: processes(one, state="stopped"), 10, "shown stopped")
    assert recorder.handled == []
    acknowledged = processes(one)[0]["commands"]
    assert [c["action"] for c in acknowledged] == ["quiet", "stop"]


def test_the_cluster_s_lag_and_the_dlq_explorer_replaying_to_the_source(
    kafka_bootstrap: str, new_topic: TopicFactory, fleet_suffix: str, dashboard: Any
) -> None:
    fleet = fleet_settings(fleet_suffix)
    topic = new_topic(2)
    dlq = f"{topic}.dlq"
    recorder = Recorder()
    app_name = f"orders-{fleet_suffix}"
    one = dashboard(fleet)
    with running(recorder.app(app_name, topic, dlq=dlq), worker_settings(kafka_bootstrap, fleet)):
        wait_until(lambda: len(partitions(one, topic)) == 2, 30, "the partitions owned")
        one.command("pause", topic=topic, partition=0)
        wait_until(lambda: partitions(one, topic)[0]["pause_reason"] == "operator", 10, "held")
        send(kafka_bootstrap, topic, [{"id": i} for i in range(5)], partition=0)
        send(kafka_bootstrap, topic, [{"id": 99, "fail": True}], partition=1)

        def lagging() -> dict[str, Any] | None:
            for group in one.api("/api/groups")["groups"]:
                rows = {p["partition"]: p for p in group["partitions"] if p["topic"] == topic}
                if group["group"] == app_name and rows.get(0, {}).get("lag") == 5:
                    return group
            return None

        # The cluster's view (committed offsets and log ends from the brokers).
        group = wait_until(lagging, 40, "the group's lag of 5 on partition 0, from the cluster")
        assert group["state"] == "Stable" and len(group["members"]) == 1
        row = next(p for p in group["partitions"] if p["topic"] == topic and p["partition"] == 0)
        assert row["time_lag"] is not None and row["time_lag"] >= 0

        # The failed record, in the fleet's failures and in the DLQ explorer, decoded.
        failure = wait_until(
            lambda: [f for f in one.api("/api/failures")["failures"] if f["topic"] == topic],
            20,
            "the failure across the fleet",
        )[0]
        assert failure["app"] == app_name and "order 99 is broken" in failure["traceback"]
        [record] = wait_until(lambda: one.api(f"/api/dlq/{dlq}")["records"], 20, "the DLQ")
        assert record["decoded"] is True and record["value"] == {"id": 99, "fail": True}
        assert record["kw"]["kw.original.topic"] == topic
        assert record["kw"]["kw.handler"] == "handle"
        assert record["error"]["message"] == "order 99 is broken"
        # Only a topic a handler declared as its DLQ: not a reader of any topic.
        assert get(one.port, f"/api/dlq/{topic}")[0] == 404

        # The record has no key: replayed, it may go to either partition. Both run again.
        one.command("resume", topic=topic, partition=0)
        wait_until(lambda: recorder.count(topic) == 5, 30, "partition 0's records handled")
        recorder.failing.clear()  # the bug is fixed
        where = [record["dlq"]["partition"], record["dlq"]["offset"]]
        status, result = one.post("/api/dlq/replay", {"topic": dlq, "records": [where]})
        assert status == 200 and result["replayed"] == 1, result
        wait_until(lambda: recorder.count(topic) == 6, 30, "the replayed record handled")
        [(_, _, _, value, headers)] = [h for h in recorder.handled if h[3]["id"] == 99]
        assert value == {"id": 99, "fail": True}
        assert ("kw.replayed_from", f"{dlq}[{where[0]}]@{where[1]}".encode()) in headers
        # "All" is `dlq replay`: what its progress group has not replayed yet, once.
        status, result = one.post("/api/dlq/replay", {"topic": dlq, "all": True})
        assert (status, result["replayed"]) == (200, 1), result
        wait_until(lambda: recorder.count(topic) == 7, 30, "replayed again, handled again")
        status, result = one.post("/api/dlq/replay", {"topic": dlq, "all": True})
        assert (status, result["replayed"], result["scanned"]) == (200, 0, 0), result
        assert one.post("/api/dlq/replay", {"topic": dlq})[0] == 400
    entries = one.api("/api/audit")["audit"]
    assert [e["action"] for e in entries][:5] == ["replay"] * 3 + ["resume", "pause"]


def test_every_child_of_a_supervisor_reports_itself(  # noqa: PLR0917 - fixtures
    kafka_bootstrap: str,
    new_topic: TopicFactory,
    fleet_suffix: str,
    dashboard: Any,
    fleet_worker: Any,
    tmp_path: Path,
) -> None:
    """Under --processes 2 each child is a process of the fleet (its own report, its own
    partitions and counters, from its own metrics files), and each says stopped when the
    supervisor stops them."""
    fleet = fleet_settings(fleet_suffix)
    topic = new_topic(2)
    one = dashboard(fleet)
    app = f"orders-{fleet_suffix}"
    supervisor = fleet_worker(
        fleet,
        app=app,
        topic=topic,
        record=tmp_path / "handled",
        broken=tmp_path / "no",
        processes=2,
    )

    def children() -> list[dict[str, Any]] | None:
        found = [p for p in processes(one, app=app, state="ready") if p["partitions"]]
        return found if len(found) == 2 else None

    found = wait_until(children, 90, "both children ready, each with a partition")
    assert sorted(p["index"] for p in found) == [0, 1]
    assert supervisor.pid not in {p["pid"] for p in found}  # the children, not the supervisor
    send(kafka_bootstrap, topic, [{"id": i} for i in range(10)], partition=0)
    send(kafka_bootstrap, topic, [{"id": i} for i in range(10, 30)], partition=1)

    def finished() -> dict[int, int] | None:
        counts = {p["index"]: p["handlers"][0]["finished"] for p in processes(one, app=app)}
        return counts if sorted(counts.values()) == [10, 20] else None

    wait_until(finished, 30, "each child's own count, 10 and 20")
    supervisor.stop()
    wait_until(lambda: len(processes(one, app=app, state="stopped")) == 2, 15, "both shown stopped")

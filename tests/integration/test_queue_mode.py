"""Queue mode (share groups, KIP-932) against the real broker, with real `kafkaworker run`
processes of tests/apps/queue_recorder.py: every delivery is one line in a file, and the tests
count them against what was produced."""

from __future__ import annotations

import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, NamedTuple

import orjson
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ResourceType,
)

from kafkaworker.testing.jvm import free_port
from tests.conftest import TopicFactory
from tests.metrics_support import get, total
from tests.support import ROOT, WorkerProcess, read_topic, wait_until

pytestmark = [pytest.mark.kafka]


class Delivery(NamedTuple):
    pid: int
    value: int
    partition: int
    offset: int
    attempt: int
    outcome: str
    started: float
    finished: float


def deliveries(path: Path) -> list[Delivery]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        pid, value, partition, offset, attempt, outcome, started, finished = line.split()
        rows.append(
            Delivery(
                int(pid),
                int(value),
                int(partition),
                int(offset),
                int(attempt),
                outcome,
                float(started),
                float(finished),
            )
        )
    return rows


def handled(path: Path) -> Counter[int]:
    """How often each value was handled successfully."""
    return Counter(d.value for d in deliveries(path) if d.outcome == "ok")


class QueueWorker(WorkerProcess):
    """A real `kafkaworker run tests.apps.queue_recorder:app` process."""

    def __init__(self, bootstrap: str, topic: str, record: Path, **env: str) -> None:
        super().__init__(bootstrap, topic, record, QUEUE_TOPIC=topic, QUEUE_FILE=str(record), **env)

    def start(self) -> QueueWorker:
        import subprocess  # noqa: PLC0415

        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "kafkaworker", "run", "tests.apps.queue_recorder:app"],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return self


def produce_jobs(bootstrap: str, topic: str, values: range) -> None:
    """One record batch per few records, as a job queue's producers make them: the broker
    hands a share group whole record batches, so one large batch would go to one member."""
    producer = Producer({"bootstrap.servers": bootstrap, "batch.num.messages": 4, "linger.ms": 0})
    for value in values:
        producer.produce(topic, b"%d" % value)
        producer.poll(0)
    assert producer.flush(30) == 0


def set_group_config(bootstrap: str, group: str, **configs: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    entries = [
        ConfigEntry(k.replace("_", "."), v, incremental_operation=AlterConfigOpType.SET)
        for k, v in configs.items()
    ]
    futures = admin.incremental_alter_configs(
        [ConfigResource(ResourceType.GROUP, group, incremental_configs=entries)]
    )
    for future in futures.values():
        future.result(30)


def stop(worker: WorkerProcess, timeout: float = 45) -> int:
    worker.signal(signal.SIGTERM)
    try:
        return worker.wait(timeout)
    except Exception:
        worker.kill()
        raise


def env_for(topic: str, **more: Any) -> dict[str, str]:
    return {"QUEUE_GROUP": f"q-{topic}", **{k: str(v) for k, v in more.items()}}


@pytest.mark.slow
def test_three_processes_share_one_partition(
    kafka_bootstrap: str, new_topic: TopicFactory, tmp_path: Path
) -> None:
    topic = new_topic(1)
    record = tmp_path / "deliveries.txt"
    env = env_for(topic, QUEUE_SLEEP=0.01, QUEUE_CONCURRENCY=2)
    workers = [QueueWorker(kafka_bootstrap, topic, record, **env).start() for _ in range(3)]
    try:
        # Produced once all three are there: else the first member to join takes the lot.
        wait_until(
            lambda: all(
                "share group config" in w.output() or "worker started" in w.output()
                for w in workers
            ),
            60,
            "three workers started",
        )
        produce_jobs(kafka_bootstrap, topic, range(600))
        wait_until(lambda: set(handled(record)) == set(range(600)), 120, "every record handled")
    finally:
        codes = [stop(w) for w in workers]
    assert codes == [0, 0, 0], [w.output()[-2000:] for w in workers]
    by_pid = Counter(d.pid for d in deliveries(record) if d.outcome == "ok")
    print(f"\nrecords handled per process: {sorted(by_pid.values())}")
    assert set(by_pid) == {w.pid for w in workers}, by_pid  # each handled a share
    assert min(by_pid.values()) >= 600 / 3 / 4, by_pid  # none idle while others worked
    assert set(handled(record)) == set(range(600))  # nothing lost


def test_failures_release_then_dead_letter_then_never_again(
    kafka_bootstrap: str, new_topic: TopicFactory, tmp_path: Path, kind: str
) -> None:
    topic = new_topic(1)
    dlq = new_topic(1)
    record = tmp_path / "deliveries.txt"
    env = env_for(
        topic,
        QUEUE_RETRIES=3,
        QUEUE_DLQ=dlq,
        QUEUE_FAIL_UNTIL="1:2",  # fails twice, then succeeds at its third delivery
        QUEUE_FAIL_ALWAYS="2",  # fails at every delivery: to the DLQ after 1 + 3 deliveries
        QUEUE_FATAL="3",  # DeadLetter: to the DLQ at its first delivery
        QUEUE_ASYNC="1" if kind == "async" else "0",
    )
    port = free_port()
    worker = QueueWorker(
        kafka_bootstrap, topic, record, KAFKAWORKER_METRICS__PORT=str(port), **env
    ).start()
    try:
        wait_until(lambda: get(port, "/readyz")[0] == 200, 60, "the member ready")
        produce_jobs(kafka_bootstrap, topic, range(10))
        dead = read_topic(kafka_bootstrap, dlq, 2, timeout=60)
        wait_until(lambda: set(handled(record)) == set(range(10)) - {2, 3}, 60, "the rest")
        time.sleep(2)  # what could still come again (it must not) has time to come
        acks = {
            kind: total(port, "kafkaworker_acknowledgements_total", handler="work", type=kind)
            for kind in ("accept", "release", "reject")
        }
        by_delivery = {
            n: total(port, "kafkaworker_deliveries_total", handler="work", delivery=n)
            for n in ("1", "2", "3", "4")
        }
    finally:
        assert stop(worker) == 0, worker.output()[-3000:]
    rows = deliveries(record)
    attempts = {v: [d.attempt for d in rows if d.value == v] for v in (1, 2, 3)}
    assert attempts[1] == [1, 2, 3]
    assert attempts[2] == [1, 2, 3, 4]  # retries=3: four deliveries, never a fifth
    assert attempts[3] == [1]
    headers = {int(r.value()): {k: v for k, v in r.headers() or []} for r in dead}
    assert set(headers) == {2, 3}
    assert headers[2]["kw.attempts"] == b"4"  # its deliveries
    assert headers[3]["kw.attempts"] == b"1"
    assert headers[2]["kw.original.topic"] == topic.encode()
    assert handled(record)[1] == 1
    # 8 handled; value 1 released twice, value 2 three times; values 2 and 3 rejected after
    # their DLQ records were acknowledged.
    assert acks == {"accept": 8, "release": 5, "reject": 2}
    assert by_delivery == {"1": 10, "2": 2, "3": 2, "4": 1}


def test_the_brokers_delivery_limit_sends_the_last_delivery_to_the_dlq(
    kafka_bootstrap: str, new_topic: TopicFactory, tmp_path: Path
) -> None:
    topic = new_topic(1)
    dlq = new_topic(1)
    group = f"q-{topic}"
    set_group_config(kafka_bootstrap, group, share_delivery_count_limit="3")
    record = tmp_path / "deliveries.txt"
    env = env_for(topic, QUEUE_RETRIES=10, QUEUE_DLQ=dlq, QUEUE_FAIL_ALWAYS="0")
    worker = QueueWorker(kafka_bootstrap, topic, record, **env).start()
    try:
        produce_jobs(kafka_bootstrap, topic, range(1))
        [dead] = read_topic(kafka_bootstrap, dlq, 1, timeout=60)
    finally:
        assert stop(worker) == 0, worker.output()[-3000:]
    assert [d.attempt for d in deliveries(record)] == [1, 2, 3]
    assert dict(dead.headers())["kw.attempts"] == b"3"


def starts(path: Path) -> list[tuple[int, int]]:
    """(pid, value) of every record a handler started."""
    if not path.exists():
        return []
    return [
        (int(p), int(v)) for p, v, _ in (line.split() for line in path.read_text().splitlines())
    ]


@pytest.mark.slow
def test_sigterm_drains_and_releases_what_it_had_not_started(
    kafka_bootstrap: str, new_topic: TopicFactory, tmp_path: Path, kind: str
) -> None:
    topic = new_topic(1)
    group = f"q-{topic}"
    # The longest lock a broker allows: a record released at shutdown must reach the other
    # member long before its lock would have run out.
    set_group_config(kafka_bootstrap, group, share_record_lock_duration_ms="60000")
    record, started = tmp_path / "deliveries.txt", tmp_path / "starts.txt"
    env = env_for(
        topic,
        QUEUE_SLEEP=0.5,
        QUEUE_CONCURRENCY=2,
        QUEUE_STARTS=str(started),
        QUEUE_ASYNC="1" if kind == "async" else "0",
    )
    first = QueueWorker(kafka_bootstrap, topic, record, **env).start()
    produce_jobs(kafka_bootstrap, topic, range(40))
    wait_until(lambda: len(starts(started)) >= 2, 60, "the first member's first records")
    second = QueueWorker(kafka_bootstrap, topic, record, **env).start()
    wait_until(
        lambda: any(pid == second.pid for pid, _ in starts(started)), 60, "the second member"
    )
    running = {v for pid, v in starts(started) if pid == first.pid}
    signalled = time.monotonic()
    assert stop(first) == 0, first.output()[-3000:]
    assert time.monotonic() - signalled < 10
    try:
        wait_until(lambda: set(handled(record)) == set(range(40)), 90, "every record")
    finally:
        assert stop(second) == 0, second.output()[-3000:]
    rows = deliveries(record)
    ok_by_first = {d.value for d in rows if d.pid == first.pid and d.outcome == "ok"}
    assert running <= ok_by_first  # what ran at the signal was finished, not abandoned
    released = [d for d in rows if d.pid == second.pid and d.attempt == 2]
    assert released, first.output()[-3000:]  # the first member held unstarted records
    assert "records not started were released" in first.output()
    # Handled by the other member within seconds, not after the 60 s lock.
    wall_of_signal = signalled  # both clocks are time.monotonic() on this machine
    assert max(d.started for d in released) - wall_of_signal < 30, released


@pytest.mark.slow
def test_kill_9_of_one_of_three_members_loses_nothing(
    kafka_bootstrap: str, new_topic: TopicFactory, tmp_path: Path
) -> None:
    topic = new_topic(1)
    group = f"q-{topic}"
    # The shortest lock a broker allows (group.share.min.record.lock.duration.ms, 15 s): the
    # killed member's records come back when their locks run out.
    set_group_config(kafka_bootstrap, group, share_record_lock_duration_ms="15000")
    record = tmp_path / "deliveries.txt"
    env = env_for(topic, QUEUE_SLEEP=0.02, QUEUE_CONCURRENCY=2)
    workers = [QueueWorker(kafka_bootstrap, topic, record, **env).start() for _ in range(3)]
    total = 1500
    try:
        produce_jobs(kafka_bootstrap, topic, range(total))
        wait_until(
            lambda: all(sum(d.pid == w.pid for d in deliveries(record)) >= 30 for w in workers),
            90,
            "all three members working",
        )
        victim = workers.pop(0)
        victim.kill()  # SIGKILL: nothing acknowledged, nothing released
        killed_at = time.monotonic()
        wait_until(lambda: set(handled(record)) == set(range(total)), 180, "every record")
        recovered = time.monotonic() - killed_at
    finally:
        codes = [stop(w) for w in workers]
    assert codes == [0, 0], [w.output()[-2000:] for w in workers]
    counts = handled(record)
    assert set(counts) == set(range(total))  # nothing lost
    redelivered = [d for d in deliveries(record) if d.attempt > 1]
    duplicates = sum(n - 1 for n in counts.values())
    print(
        f"\nkill -9 of one of three: {total} records, 0 lost, {duplicates} handled twice, "
        f"{len(redelivered)} redelivered, every record handled {recovered:.1f} s after the kill"
    )
    assert all(d.pid != victim.pid for d in redelivered)


@pytest.mark.slow
def test_a_handler_slower_than_the_lock_is_named_in_a_warning(
    kafka_bootstrap: str, new_topic: TopicFactory, tmp_path: Path
) -> None:
    topic = new_topic(1)
    group = f"q-{topic}"
    # A 4 s lock (the test broker's floor is 1 s, Kafka's 15 s) and a 5 s handler.
    set_group_config(kafka_bootstrap, group, share_record_lock_duration_ms="4000")
    record, started = tmp_path / "deliveries.txt", tmp_path / "starts.txt"
    env = env_for(topic, QUEUE_SLEEP=5, QUEUE_CONCURRENCY=1, QUEUE_STARTS=str(started))
    worker = QueueWorker(kafka_bootstrap, topic, record, **env).start()
    try:
        produce_jobs(kafka_bootstrap, topic, range(1))
        wait_until(
            lambda: "held longer than the share group's acquisition lock" in worker.output(),
            60,
            "the lock warning",
        )
        wait_until(lambda: handled(record), 30, "the slow record handled")
        # Its ACCEPT came after the lock: refused, and the record is delivered again.
        wait_until(lambda: len(starts(started)) >= 2, 30, "the record delivered again")
    finally:
        assert stop(worker) == 0, worker.output()[-3000:]
    output = worker.output()
    warning = next(line for line in output.splitlines() if "acquisition lock" in line)
    assert "handler=work" in warning and "share.record.lock.duration.ms" in warning
    assert "lock_seconds=4.0" in warning
    assert "INVALID_RECORD_STATE" in output  # the late ACCEPT, refused


def test_routes_lag_and_offsets_show_say_what_is_known_of_a_share_group(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner  # noqa: PLC0415

    from kafkaworker.cli import cli  # noqa: PLC0415

    monkeypatch.setenv("KAFKAWORKER_KAFKA__BOOTSTRAP_SERVERS", kafka_bootstrap)
    app = "tests.apps.queue_recorder:app"
    routes = CliRunner().invoke(cli, ["routes", app])
    assert routes.exit_code == 0, routes.output
    header, row = routes.output.splitlines()[:2]
    assert header.split()[:2] == ["NAME", "MODE"]
    assert row.split()[:2] == ["work", "queue"]
    lag = CliRunner().invoke(cli, ["lag", app])
    assert lag.exit_code == 0, lag.output
    assert "handler work: share group queue-recorder (queue mode): the Python client's" in (
        " ".join(lag.output.split())
    )
    as_json = CliRunner().invoke(cli, ["lag", app, "--json"])
    assert orjson.loads(as_json.output)["work"]["mode"] == "queue"
    show = CliRunner().invoke(cli, ["offsets", "show", "queue-recorder"])
    assert show.exit_code == 0, show.output
    assert "if queue-recorder is a share group: the Python client's admin API" in show.output


def test_check_reads_the_share_group_and_changes_nothing(
    kafka_bootstrap: str, new_topic: TopicFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner  # noqa: PLC0415

    from kafkaworker.cli import cli  # noqa: PLC0415

    monkeypatch.setenv("KAFKAWORKER_KAFKA__BOOTSTRAP_SERVERS", kafka_bootstrap)
    group = f"q-{new_topic(1)}"  # a share group nobody configured
    monkeypatch.setenv("KAFKAWORKER_HANDLERS__WORK__GROUP", group)
    result = CliRunner().invoke(cli, ["check", "tests.apps.queue_recorder:app"])
    line = next(
        (x for x in result.output.splitlines() if f"share group {group}" in x), result.output
    )
    assert line.startswith("ok"), line
    assert "delivery limit 5, lock 30s, share.auto.offset.reset latest" in line
    assert "(start-up sets earliest: not set on the group)" in line
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    [entries] = [
        f.result(30)
        for f in admin.describe_configs([ConfigResource(ResourceType.GROUP, group)]).values()
    ]
    assert entries["share.auto.offset.reset"].is_default  # check changed nothing

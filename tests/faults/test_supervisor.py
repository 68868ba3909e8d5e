"""`kafkaworker run --processes N`: a supervisor over real worker processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kafkaworker.testing.jvm import free_port
from tests.conftest import TopicFactory
from tests.metrics_support import get, samples, total
from tests.support import ROOT, committed, end_offsets, produce, read_records, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def supervisor(
    bootstrap: str, topic: str, record: Path, log: Path, *options: str, **env: str
) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kafkaworker",
                "run",
                "tests.apps.recorder:app",
                "--processes",
                "2",
                *options,
            ],
            cwd=ROOT,
            start_new_session=True,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={
                **os.environ,
                "KAFKAWORKER_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
                "KAFKAWORKER_COMMIT_INTERVAL": "0.2",
                "RECORDER_TOPIC": topic,
                "RECORDER_FILE": str(record),
                "RECORDER_GROUP": f"g-{topic}",
                "KAFKAWORKER_KAFKA__CONSUMER": '{"session.timeout.ms": 6000}',
                **env,
            },
        )


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(") ", 1)[1][0] != "Z"


def test_two_processes_share_the_work_a_killed_one_restarts_and_ctrl_c_drains(
    kafka_bootstrap: str, new_topic: TopicFactory, tmp_path: Path, kind: str
) -> None:
    """Async handlers too: each process runs its own event loop (and has its own GIL)."""
    topic = new_topic(4)
    total = 3000
    produce(
        kafka_bootstrap,
        topic,
        [b"%d" % i for i in range(total)],
        partitions=[i % 4 for i in range(total)],
    )
    record, log = tmp_path / "records.txt", tmp_path / "supervisor.log"
    sup = supervisor(
        kafka_bootstrap,
        topic,
        record,
        log,
        RECORDER_SLEEP="0.01",
        RECORDER_ASYNC="1" if kind == "async" else "0",
    )
    try:

        def two_pids() -> set[int] | None:
            pids = {r.pid for r in read_records(record)}
            return pids if len(pids) == 2 else None

        pids = wait_until(two_pids, 90, "both worker processes handling messages")
        victim = sorted(pids)[0]
        os.kill(victim, signal.SIGKILL)
        wait_until(
            lambda: {r.pid for r in read_records(record)} - pids,
            90,
            "a restarted worker process handling messages",
        )
        wait_until(
            lambda: (
                committed(kafka_bootstrap, f"g-{topic}", topic, 4)
                == end_offsets(kafka_bootstrap, topic, 4)
            ),
            120,
            "everything committed",
        )
        children = {r.pid for r in read_records(record)} - {victim}
        os.killpg(sup.pid, signal.SIGINT)  # what a terminal's Ctrl+C does
        assert sup.wait(60) == 0, log.read_text()[-3000:]
    finally:
        if sup.poll() is None:
            os.killpg(sup.pid, signal.SIGKILL)
    assert not any(alive(pid) for pid in children)
    assert {(r.partition, r.offset) for r in read_records(record)} == {
        (i % 4, i // 4) for i in range(total)
    }


def test_children_that_keep_crashing_make_the_supervisor_give_up(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    log = tmp_path / "supervisor.log"
    started = time.monotonic()
    sup = supervisor(kafka_bootstrap, "no-such-topic-anywhere", tmp_path / "r.txt", log)
    try:
        assert sup.wait(120) == 1, log.read_text()[-3000:]
    finally:
        if sup.poll() is None:
            os.killpg(sup.pid, signal.SIGKILL)
    assert time.monotonic() - started < 120
    assert "worker processes keep crashing; giving up" in log.read_text()


def test_the_supervisor_serves_the_metrics_and_health_of_all_its_children(
    kafka_bootstrap: str, new_topic: TopicFactory, tmp_path: Path
) -> None:
    topic = new_topic(4)
    count = 2000
    produce(kafka_bootstrap, topic, [b"%d" % i for i in range(count)])
    record, log = tmp_path / "records.txt", tmp_path / "supervisor.log"
    port = free_port()
    sup = supervisor(
        kafka_bootstrap,
        topic,
        record,
        log,
        "--metrics-port",
        str(port),
        RECORDER_SLEEP="0.002",
        KAFKAWORKER_METRICS__HOST="127.0.0.1",
    )
    try:
        wait_until(lambda: get(port, "/readyz")[0] == 200, 60, "both children joined")
        ready_pids = {labels["pid"] for labels, _ in samples(port)["kafkaworker_ready"]}
        assert len(ready_pids) == 2
        wait_until(
            lambda: total(port, "kafkaworker_messages_finished_total") == count,
            90,
            f"{count} finished, summed over both children",
        )
        wait_until(
            lambda: (
                total(port, "kafkaworker_consumer_lag") == 0
                and total(port, "kafkaworker_assigned_partitions") == 4
            ),
            30,
            "no lag and four partitions over both children",
        )
        handled_by = {r.pid for r in read_records(record)}
        assert {str(pid) for pid in handled_by} <= ready_pids

        victim = int(sorted(ready_pids)[0])
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: get(port, "/readyz")[0] == 503, 30, "/readyz 503 with a child down")
        assert get(port, "/healthz")[0] == 200  # the supervisor restarts it: no probe kill
        wait_until(lambda: get(port, "/readyz")[0] == 200, 60, "ready again after the restart")
        pids = {labels["pid"] for labels, _ in samples(port)["kafkaworker_ready"]}
        assert str(victim) not in pids
        assert len(pids) == 2
        # The killed child's counts stay in the totals.
        assert total(port, "kafkaworker_messages_finished_total") >= count

        os.killpg(sup.pid, signal.SIGTERM)
        assert sup.wait(60) == 0, log.read_text()[-3000:]
    finally:
        if sup.poll() is None:
            os.killpg(sup.pid, signal.SIGKILL)
    assert get(port, "/metrics")[0] == 0

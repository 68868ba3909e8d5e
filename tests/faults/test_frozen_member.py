"""A member frozen (SIGSTOP, as a long GC pause or a stopped VM) past its session timeout: the
group moves its partitions to the other member; after SIGCONT the frozen one must notice that
it lost them, drop its work without committing, rejoin and carry on. Nothing is lost, with
both group protocols."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from tests.conftest import TopicFactory
from tests.support import (
    Feed,
    WorkerProcess,
    committed,
    end_offsets,
    read_records,
    report_fault,
    wait_until,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

PARTITIONS = 4


@pytest.mark.parametrize("protocol", ["classic", "consumer"])
def test_a_frozen_member_loses_its_partitions_then_rejoins_and_nothing_is_lost(
    kafka_bootstrap: str, new_topic: TopicFactory, tmp_path: Path, protocol: str
) -> None:
    topic = new_topic(PARTITIONS)
    # A steady stream, so that both members still have work after the freeze.
    feed = Feed(kafka_bootstrap, topic, rate=400)
    record = tmp_path / "records.txt"
    env = {
        "RECORDER_GROUP": f"g-{topic}",
        "RECORDER_SLEEP": "0.003",
        "RECORDER_ORDERING": "key",
        "KAFKAWORKER_KAFKA__GROUP_PROTOCOL": protocol,
    }
    # Classic: the 6 s session timeout WorkerProcess sets. KIP-848: the test broker's
    # group.consumer.session.timeout.ms, 10 s.
    if protocol == "consumer":
        env["KAFKAWORKER_KAFKA__CONSUMER"] = "{}"
    frozen_for = 9.0 if protocol == "classic" else 14.0
    a = WorkerProcess(kafka_bootstrap, topic, record, **env).start()
    b = WorkerProcess(kafka_bootstrap, topic, record, **env).start()
    workers = [a, b]
    try:
        wait_until(
            lambda: all(sum(r.pid == w.pid for r in read_records(record)) >= 50 for w in (a, b)),
            60,
            "A and B processing",
        )
        a.signal(signal.SIGSTOP)
        frozen_at = time.monotonic()
        try:
            # B takes A's partitions over while A is frozen.
            before = sum(r.pid == b.pid for r in read_records(record))
            wait_until(
                lambda: sum(r.pid == b.pid for r in read_records(record)) > before + 300,
                30,
                "B working while A is frozen",
            )
            left = frozen_for - (time.monotonic() - frozen_at)
            if left > 0:
                time.sleep(left)  # the freeze itself must outlast the session timeout
        finally:
            a.signal(signal.SIGCONT)
        thawed = time.monotonic()
        # A notices, drops its work without committing, rejoins and handles records again.
        seen = sum(r.pid == a.pid and r.finished > thawed for r in read_records(record))
        wait_until(
            lambda: (
                sum(r.pid == a.pid and r.finished > thawed for r in read_records(record))
                > seen + 50
            ),
            60,
            "A handling records again after it thawed",
        )
        rejoined = time.monotonic() - thawed
        feed.stop()
        wait_until(
            lambda: {(r.partition, r.offset) for r in read_records(record)} >= feed.acked,
            120,
            "every record",
        )
        wait_until(
            lambda: (
                committed(kafka_bootstrap, f"g-{topic}", topic, PARTITIONS)
                == end_offsets(kafka_bootstrap, topic, PARTITIONS)
            ),
            60,
            "commits at the end of the log",
        )
    finally:
        feed.stop()
        codes = []
        for worker in workers:
            worker.signal(signal.SIGCONT)
            worker.signal(signal.SIGTERM)
        for worker in workers:
            try:
                codes.append(worker.wait(60))
            except Exception:
                worker.kill()
                raise
    assert codes == [0, 0], a.output()[-3000:] + b.output()[-3000:]
    out = a.output()
    assert "partitions lost" in out, out[-3000:]  # noticed, and committed nothing for them
    records = read_records(record)
    assert {(r.partition, r.offset) for r in records} == feed.acked  # nothing lost or invented
    report_fault(
        f"member frozen (SIGSTOP) past its session, {protocol} protocol",
        len(feed.acked),
        0,
        len(records) - len(feed.acked),
        rejoined,
    )

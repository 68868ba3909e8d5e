"""Queue mode shares a backlog: records produced in large batches before any member starts
(the broker acquires whole record batches: the first member to fetch used to take all 6,000
and the two others none) are spread over three members, each at least a fifth; with one of
them killed mid-stream, nothing is lost. Real `kafkaworker run` processes, a 20 ms handler,
8 threads each."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka import Producer

from tests.conftest import TopicFactory
from tests.integration.test_queue_mode import (
    QueueWorker,
    deliveries,
    env_for,
    handled,
    set_group_config,
    stop,
)
from tests.support import report_fault, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

TOTAL = 6000


def backlog(bootstrap: str, topic: str) -> None:
    """TOTAL records in record batches of thousands, as a bulk producer writes them."""
    producer = Producer(
        {"bootstrap.servers": bootstrap, "batch.num.messages": 10_000, "linger.ms": 200}
    )
    for value in range(TOTAL):
        producer.produce(topic, b"%d" % value)
    assert producer.flush(30) == 0


def test_a_backlog_in_large_batches_is_spread_over_three_members(
    kafka_bootstrap: str, new_topic: TopicFactory, tmp_path: Path
) -> None:
    topic = new_topic(1)
    backlog(kafka_bootstrap, topic)
    record = tmp_path / "deliveries.txt"
    env = env_for(topic, QUEUE_SLEEP=0.02, QUEUE_CONCURRENCY=8)
    workers = [QueueWorker(kafka_bootstrap, topic, record, **env).start() for _ in range(3)]
    started = time.monotonic()
    try:
        wait_until(lambda: set(handled(record)) == set(range(TOTAL)), 180, "every record")
        seconds = time.monotonic() - started
    finally:
        codes = [stop(w) for w in workers]
    assert codes == [0, 0, 0], [w.output()[-2000:] for w in workers]
    done = [d for d in deliveries(record) if d.outcome == "ok"]
    by_pid = Counter(d.pid for d in done)
    duplicates = len(done) - TOTAL
    print(
        f"\n{TOTAL} records produced in large batches: per member {sorted(by_pid.values())}, "
        f"{duplicates} twice, all handled {seconds:.1f} s after the start (one member alone: "
        f"{TOTAL * 0.02 / 8:.0f} s of handler time)"
    )
    assert min(by_pid.get(w.pid, 0) for w in workers) >= TOTAL / 5, by_pid
    # Shared out at its first and second delivery at most: handled at its third at the
    # latest, two deliveries from the limit (5).
    assert max(d.attempt for d in deliveries(record)) <= 3
    report_fault(
        "queue mode: a backlog in large batches, three members", TOTAL, 0, duplicates, None
    )


def test_a_member_killed_while_sharing_a_backlog_loses_nothing(
    kafka_bootstrap: str, new_topic: TopicFactory, tmp_path: Path
) -> None:
    topic = new_topic(1)
    group = f"q-{topic}"
    # The shortest lock a broker allows: the killed member's records come back when it ends.
    set_group_config(kafka_bootstrap, group, share_record_lock_duration_ms="15000")
    backlog(kafka_bootstrap, topic)
    record = tmp_path / "deliveries.txt"
    env = env_for(topic, QUEUE_SLEEP=0.02, QUEUE_CONCURRENCY=8)
    workers = [QueueWorker(kafka_bootstrap, topic, record, **env).start() for _ in range(3)]
    try:
        wait_until(
            lambda: all(sum(d.pid == w.pid for d in deliveries(record)) >= 100 for w in workers),
            90,
            "all three members working",
        )
        victim = workers.pop(0)
        victim.kill()  # SIGKILL: what it held, kept or shared out, comes back after its lock
        killed_at = time.monotonic()
        wait_until(lambda: set(handled(record)) == set(range(TOTAL)), 180, "every record")
        recovered = time.monotonic() - killed_at
    finally:
        codes = [stop(w) for w in workers]
    assert codes == [0, 0], [w.output()[-2000:] for w in workers]
    counts = handled(record)
    assert set(counts) == set(range(TOTAL))  # nothing lost
    duplicates = sum(n - 1 for n in counts.values())
    by_pid = Counter(d.pid for d in deliveries(record) if d.outcome == "ok")
    print(
        f"\nkill -9 of one of three sharing a backlog: per member {sorted(by_pid.values())}, "
        f"0 lost, {duplicates} handled twice, every record handled {recovered:.1f} s after"
    )
    # Shared out at the first and second delivery at most: a third at the latest, at most
    # one more when a lock ran out.
    assert max(d.attempt for d in deliveries(record)) <= 4
    report_fault(
        "queue mode: a backlog in large batches, one of three members killed (kill -9)",
        TOTAL,
        0,
        duplicates,
        None,
    )

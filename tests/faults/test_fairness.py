"""Fairness under a backlog: every partition of a backlogged topic reaches the handlers soon
after its assignment, whatever order librdkafka hands the partitions' records out in. Eight
partitions of 3,000 records each are produced before the worker starts (a 1 ms handler, four
threads: about 10 s of work); each partition's first record must be finished within 2 s of
the assignment, and after 5 s no partition may lag far behind the others."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import pytest

from tests.conftest import TopicFactory
from tests.faults.test_delivery import keyed, stop
from tests.support import WorkerProcess, read_records, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

PARTITIONS = 8
PER_PARTITION = 3000


def assigned_at(worker: WorkerProcess) -> float:
    """When the worker logged its assignment, on the monotonic clock the recorder writes."""
    [line] = [line for line in worker.output().splitlines() if "partitions assigned" in line]
    stamp = datetime.fromisoformat(line.split()[0].replace("Z", "+00:00")).timestamp()
    return stamp - (time.time() - time.monotonic())


@pytest.mark.parametrize("ordering", ["key", "partition"])
def test_every_backlogged_partition_is_handled_within_two_seconds_of_assignment(
    kafka_bootstrap: str, new_topic: TopicFactory, tmp_path: Path, ordering: str
) -> None:
    topic = new_topic(PARTITIONS)
    keyed(kafka_bootstrap, topic, PARTITIONS, PARTITIONS * PER_PARTITION, keys=200)
    record = tmp_path / "records.txt"
    worker = WorkerProcess(
        kafka_bootstrap,
        topic,
        record,
        RECORDER_GROUP=f"g-{topic}",
        RECORDER_SLEEP="0.001",
        RECORDER_ORDERING=ordering,
    ).start()
    try:
        wait_until(lambda: "partitions assigned" in worker.output(), 60, "the assignment")
        start = assigned_at(worker)
        wait_until(
            lambda: len({r.partition for r in read_records(record)}) == PARTITIONS,
            30,
            "a record of every partition",
        )
        wait_until(lambda: time.monotonic() > start + 5, 10, "5 s of work")
        records = read_records(record)
    finally:
        assert stop(worker) == 0, worker.output()[-3000:]
    first = {
        p: min(r.finished for r in records if r.partition == p) - start for p in range(PARTITIONS)
    }
    after_5s = {
        p: sum(1 for r in records if r.partition == p and r.finished <= start + 5)
        for p in range(PARTITIONS)
    }
    print(
        f"\n{ordering}: first finished (s after assignment) "
        f"{ {p: round(s, 2) for p, s in first.items()} }; finished after 5 s {after_5s}"
    )
    assert max(first.values()) < 2.0, first
    # No partition starved: each has at least half of an even share of what was finished.
    assert min(after_5s.values()) >= sum(after_5s.values()) / PARTITIONS / 2, after_5s

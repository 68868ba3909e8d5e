"""The join watchdog: a consumer out of its group for longer than join_timeout is replaced by
a fresh one (librdkafka 2.16 sometimes never rejoins after a session timeout, see
docs/reliability.md).

A member that joined and then stopped polling makes the same situation on demand: with eager
rebalancing, the coordinator holds every other member's JoinGroup until that member rejoins,
which it cannot do without polling (for up to its max.poll.interval.ms). The worker's join
waits: the watchdog must replace its consumer, and once the group can rebalance, the fresh
consumer must join and handle everything.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer

from tests.conftest import TopicFactory
from tests.support import WorkerProcess, committed, produce, read_records, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

PARTITIONS = 2
RECORDS = 400
REPLACED = "joining with a fresh one"


def test_a_consumer_stuck_out_of_its_group_is_replaced_and_then_joins(
    kafka_bootstrap: str, new_topic: TopicFactory, tmp_path: Path
) -> None:
    topic = new_topic(PARTITIONS)
    group = f"g-{topic}"
    produce(
        kafka_bootstrap,
        topic,
        [b"%d" % i for i in range(RECORDS)],
        keys=[b"k%d" % (i % 20) for i in range(RECORDS)],
    )
    blocker = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": group,
            "partition.assignment.strategy": "range",  # eager, as the worker below
            "session.timeout.ms": 45_000,
            "max.poll.interval.ms": 45_000,  # the rebalance timeout it holds others to
            "enable.auto.commit": False,
        }
    )
    blocker.subscribe([topic])
    blocking = True
    deadline = time.monotonic() + 30
    while not blocker.assignment():
        assert time.monotonic() < deadline, "the blocking member was never assigned"
        blocker.poll(0.2)
    record = tmp_path / "records.txt"
    worker = WorkerProcess(
        kafka_bootstrap,
        topic,
        record,
        RECORDER_GROUP=group,
        KAFKAWORKER_KAFKA__CONSUMER='{"session.timeout.ms": 6000, '
        '"heartbeat.interval.ms": 1000, "partition.assignment.strategy": "range"}',
        KAFKAWORKER_JOIN_TIMEOUT="4",
        KAFKAWORKER_REVOKE_TIMEOUT="2",
    ).start()
    try:
        # Its JoinGroup waits on the blocker; past join_timeout the consumer is replaced.
        wait_until(lambda: REPLACED in worker.output(), 60, "the consumer to be replaced", 0.2)
        assert read_records(record) == [], "nothing can be handled before the group settles"
        replaced_at = time.monotonic()
        blocker.close()  # the group can rebalance now: the fresh consumer joins
        blocking = False
        wait_until(
            lambda: len({(r.partition, r.offset) for r in read_records(record)}) >= RECORDS,
            60,
            "every record handled",
            0.2,
        )
        assert worker.process is not None and worker.process.poll() is None
        recovery = time.monotonic() - replaced_at
        worker.signal(signal.SIGTERM)
        assert worker.wait(60) == 0, worker.output()[-3000:]
    except BaseException:
        worker.kill()
        raise
    finally:
        if blocking:
            blocker.close()
    ends = committed(kafka_bootstrap, group, topic, PARTITIONS)
    assert sum(ends.values()) == RECORDS, ends
    assert recovery < 45, recovery

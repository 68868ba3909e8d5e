"""Leader failover on a three-node cluster (replication factor 3, min.insync.replicas 2) under a
running `kafkaworker run` process whose handler produces an output (acks=all) for every
message and dead-letters every 50th.

First the node that coordinates the worker's group (and leads some of its partitions) is
killed with SIGKILL mid-stream and brought back; then the node that leads the dead-letter
topic, while messages are being dead-lettered. Counted at the end: every input the broker
acknowledged has its output on the output topic or its record on the DLQ (poison ones on the
DLQ), the group committed to the end of the log, and the worker exits 0 on SIGTERM.
"""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from kafkaworker import headers
from kafkaworker.testing.broker import Cluster
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
FAIL_EVERY = 50


@pytest.mark.timeout(600)  # two nodes restarted on a loaded machine, then the drain
def test_leaders_killed_mid_stream_lose_nothing_and_outputs_stay_at_least_once(
    kafka_cluster3: Cluster, tmp_path: Path
) -> None:
    cluster = kafka_cluster3
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    run = uuid.uuid4().hex[:8]
    topic, output, dlq = f"fo-{run}", f"fo-out-{run}", f"fo-dlq-{run}"
    created = admin.create_topics(
        [NewTopic(topic, PARTITIONS, 3), NewTopic(output, PARTITIONS, 3), NewTopic(dlq, 1, 3)]
    )
    for future in created.values():
        future.result(30)
    group = f"g-{topic}"
    record = tmp_path / "records.txt"
    worker = WorkerProcess(
        cluster.bootstrap,
        topic,
        record,
        RECORDER_GROUP=group,
        RECORDER_ORDERING="key",
        RECORDER_OUTPUT=output,
        RECORDER_DLQ=dlq,
        RECORDER_FAIL_EVERY=str(FAIL_EVERY),
        # Each message waits for its output's acks=all (and every 50th for its DLQ write):
        # on a loaded machine with three JVMs a write took up to 250 ms, and 4 at a time
        # fell behind the feed.
        RECORDER_CONCURRENCY="32",
        # Three JVMs just started on two cores: the first metadata answer can take a while.
        KAFKAWORKER_STARTUP_TIMEOUT="60",
    ).start()
    feed = Feed(cluster.bootstrap, topic, rate=300)

    def dead() -> set[tuple[int, int]]:
        try:
            return dead_lettered(cluster.bootstrap, dlq)
        except KafkaException:
            return set()  # its leader is down (killed here): asked again

    recoveries: list[float] = []
    try:
        wait_until(
            lambda: worker.exited() or len(read_records(record)) >= 300, 90, "records handled"
        )
        assert not worker.exited(), worker.output()

        # 1. The group coordinator's node (with 3 nodes and 4 partitions, it leads some of
        # the consumed partitions too).
        coordinator = admin.describe_consumer_groups([group])[group].result(10).coordinator.id
        leaders = partition_leaders(admin, topic)
        assert coordinator in leaders.values(), (coordinator, leaders)
        recoveries.append(
            kill_and_restart(
                cluster,
                coordinator,
                progress=lambda: len(read_records(record)),
                more=300,
                worker=worker,
                feed=feed,
            )
        )

        # 2. The DLQ's leader, while every 50th message is dead-lettered.
        dlq_leader = partition_leaders(admin, dlq)[0]
        recoveries.append(
            kill_and_restart(
                cluster,
                dlq_leader,
                progress=lambda: len(dead()),
                more=5,
                worker=worker,
                feed=feed,
            )
        )
        assert worker.process is not None and worker.process.poll() is None, worker.output()
    except BaseException:
        worker.kill()
        feed.stop()
        raise

    feed.stop()
    try:
        # Every record in the input topic, which holds all the feed had acknowledged (some
        # without an offset: see Feed._delivered), must have its output or its dead letter.
        values = input_values(cluster.bootstrap, topic)
        inputs = set(values)
        assert feed.acked <= inputs
        poison = {po for po in inputs if int(values[po]) % FAIL_EVERY == 0}
        wanted_outputs = {values[po] for po in inputs - poison}
        outputs: set[bytes] = set()

        def accounted_for() -> bool:
            outputs.update(read_values(cluster.bootstrap, output))
            now_dead = dead()
            return poison <= now_dead and wanted_outputs - outputs <= {
                values[po] for po in now_dead
            }

        wait_until(accounted_for, 240, "every input's output or dead letter", 1.0)
        wait_until(
            lambda: (
                committed(cluster.bootstrap, group, topic, PARTITIONS)
                == end_offsets(cluster.bootstrap, topic, PARTITIONS)
            ),
            60,
            "the group committed to the end of the log",
        )
    finally:
        worker.signal(signal.SIGTERM)
        code = worker.wait(60)
    assert code == 0, worker.output()[-3000:]
    dead_now = dead()
    lost = {po for po in inputs - poison if values[po] not in outputs and po not in dead_now}
    lost |= poison - dead_now
    handled = [(r.partition, r.offset) for r in read_records(record)]
    duplicates = len(handled) - len(set(handled))
    report_fault(
        "leaders killed: group coordinator, then DLQ leader (3 nodes, RF 3, outputs acks=all)",
        len(inputs),
        len(lost),
        duplicates,
        max(recoveries),
    )
    assert not lost


def kill_and_restart(
    cluster: Cluster,
    node_id: int,
    *,
    progress: Callable[[], int],
    more: int,
    worker: WorkerProcess,
    feed: Feed,
) -> float:
    """SIGKILL the node, wait until `progress` grows by `more` without it (the recovery time),
    bring it back and wait until it is in the cluster again."""
    index = next(i for i, node in enumerate(cluster.nodes) if node.node_id == node_id)
    seen = progress()
    cluster.stop_node(index, kill=True)
    killed = time.monotonic()
    try:
        wait_until(lambda: progress() >= seen + more, 120, f"progress without node {node_id}", 0.5)
    except AssertionError as exc:
        raise AssertionError(
            f"{exc}; {feed.status()}; worker:\n{worker.output()[-4000:]}"
        ) from None
    recovery = time.monotonic() - killed
    cluster.start_node(index)
    return recovery


def partition_leaders(admin: AdminClient, topic: str) -> dict[int, int]:
    metadata = admin.list_topics(topic, timeout=10).topics[topic]
    return {p: meta.leader for p, meta in metadata.partitions.items()}


def _consume_all(bootstrap: str, topic: str) -> Iterable[object]:
    """Every record of `topic` up to its current end."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics[topic]
        ends = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in metadata.partitions
        }
        wanted = {p: end for p, end in ends.items() if end > 0}
        consumer.assign([TopicPartition(topic, p, 0) for p in wanted])
        deadline = time.monotonic() + 60
        while wanted:
            assert time.monotonic() < deadline, f"could not read {topic} to its end: {wanted}"
            for msg in consumer.consume(1000, 0.5):
                if msg.error() is not None:
                    continue
                yield msg
                if (msg.offset() or 0) + 1 >= wanted.get(msg.partition() or 0, 0):
                    wanted.pop(msg.partition(), None)
    finally:
        consumer.close()


def input_values(bootstrap: str, topic: str) -> dict[tuple[int, int], bytes]:
    return {(m.partition(), m.offset()): m.value() for m in _consume_all(bootstrap, topic)}  # type: ignore[attr-defined]


def read_values(bootstrap: str, topic: str) -> set[bytes]:
    return {m.value() for m in _consume_all(bootstrap, topic)}  # type: ignore[attr-defined]


def dead_lettered(bootstrap: str, dlq: str) -> set[tuple[int, int]]:
    """The (partition, offset) of the inputs on the DLQ, from its kw.original.* headers."""
    found = set()
    for msg in _consume_all(bootstrap, dlq):
        own = dict(msg.headers() or [])  # type: ignore[attr-defined]
        found.add((int(own[headers.ORIGINAL_PARTITION]), int(own[headers.ORIGINAL_OFFSET])))
    return found

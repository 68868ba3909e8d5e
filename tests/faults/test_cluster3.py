"""The three-node cluster (every node a broker and a KRaft controller; replication factor 3,
min.insync.replicas 2, the transaction state log too): acks=all writes with one node down, and
issue 26's proof 2, exactly_once through the transaction coordinator's node and a partition
leader killed with kill -9 and brought back."""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, ResourceType

from kafkaworker.testing.broker import Cluster
from tests.faults.test_exactly_once import (
    PARTITIONS,
    await_committed_to_end,
    check_output_once,
    finished,
    running,
    start,
    stop,
)
from tests.faults.test_failover import partition_leaders
from tests.support import Feed, end_offsets, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def test_acks_all_survives_one_broker_down_and_it_rejoins(kafka_cluster3: Cluster) -> None:
    cluster = kafka_cluster3
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    topic = f"rf3-{uuid.uuid4().hex[:8]}"
    admin.create_topics([NewTopic(topic, 3, 3)])[topic].result(timeout=30)

    cluster.stop_node(1)
    live = ",".join(n.bootstrap for i, n in enumerate(cluster.nodes) if i != 1)
    producer = Producer({"bootstrap.servers": live, "acks": "all", "enable.idempotence": True})
    outcomes: list[object] = []
    for i in range(300):
        producer.produce(
            topic,
            str(i).encode(),
            partition=i % 3,
            on_delivery=lambda err, _msg: outcomes.append(err),
        )
    assert producer.flush(60) == 0
    assert outcomes == [None] * 300

    cluster.start_node(1)
    metadata = admin.list_topics(timeout=10)
    assert sorted(metadata.brokers) == [1, 2, 3]

    # Every acknowledged record is there, also when read through the restarted node.
    consumer = Consumer({"bootstrap.servers": cluster.nodes[1].bootstrap, "group.id": topic})
    ends = [
        consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(3)
    ]
    consumer.close()
    assert sum(ends) == 300


def java_hash(text: str) -> int:
    """Java's String.hashCode (a signed 32-bit int) of an ASCII/BMP string."""
    h = 0
    for char in text:
        h = (31 * h + ord(char)) & 0xFFFFFFFF
    return h - (1 << 32) if h >= 1 << 31 else h


def transaction_coordinator(admin: AdminClient, transactional_id: str) -> int:
    """The node coordinating `transactional_id`: the leader of its __transaction_state
    partition, Utils.abs(hashCode) % the topic's partitions, as the broker's
    TransactionStateManager.partitionFor places it. confluent-kafka 2.16 has no
    describe_transactions, and the Java TransactionsCommand is not among the broker's runtime
    jars; the placement was checked against the broker's own log line ("Initialized
    transactionalId ...") on the node this returns."""
    partitions = admin.list_topics(TRANSACTION_STATE, timeout=10).topics[TRANSACTION_STATE]
    h = java_hash(transactional_id)
    index = 0 if h == -(1 << 31) else abs(h) % len(partitions.partitions)
    return partitions.partitions[index].leader


TRANSACTION_STATE = "__transaction_state"


@pytest.mark.timeout(300)
def test_exactly_once_through_the_transaction_coordinator_and_a_leader_killed(
    kafka_cluster3: Cluster, tmp_path: Path
) -> None:
    """Issue 26, proof 2. The copier (exactly_once, key order, concurrency 8) under a steady
    feed. First the node coordinating its transactional.id is bounced hard (kill -9, started
    again at once) mid-stream: the coordinator moves to the new leader of its
    __transaction_state partition and the worker must commit transactions again; once the node
    serves and every replica is in sync again, the node that leads the most output partitions
    (often the coordinator again, by then), the same. One after the other: all three nodes are
    the KRaft quorum's voters, and two down would lose it (and min.insync.replicas 2). A
    read_committed reader must see each input's output once, in each key's order. Before the
    fix in TransactionalCommit._renewed, the handler stopped in 1 run of 7 (an abort's fatal
    INVALID_TXN_STATE at both kills, less than a minute apart)."""
    cluster = kafka_cluster3
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    run = uuid.uuid4().hex[:8]
    source, output, group = f"eos3-{run}", f"eos3-out-{run}", f"eos-eos3-{run}"
    created = admin.create_topics(
        [NewTopic(t, PARTITIONS, 3, config={"min.insync.replicas": "2"}) for t in (source, output)]
    )
    for future in created.values():
        future.result(30)
    env = {
        "EOS_TOPIC": source,
        "EOS_OUTPUT": output,
        "EOS_GROUP": group,
        "KAFKAWORKER_MEMBER": "m1",
        # Three JVMs on two cores: the first metadata answer can take a while.
        "KAFKAWORKER_STARTUP_TIMEOUT": "60",
        # A worker that hangs is sent SIGABRT below: its threads' stacks go to its log.
        "PYTHONFAULTHANDLER": "1",
    }
    log = tmp_path / "worker.log"
    worker = start(cluster.bootstrap, env, log)
    feed = Feed(cluster.bootstrap, source, rate=1000)

    def alive() -> bool:
        return running(worker, log)

    def committed_more(more: int, what: str) -> None:
        target = finished(cluster.bootstrap, group, source) + more
        wait_until(
            lambda: alive() and finished(cluster.bootstrap, group, source) >= target,
            90,
            f"{more} more inputs committed {what}",
            0.2,
        )

    killed: list[str] = []
    recoveries: list[float] = []
    try:
        committed_more(1000, "at start")
        assert_replicated_transaction_log(admin)
        # The copier's transactional.id: group, handler, member, process index.
        coordinator = transaction_coordinator(admin, f"{group}.copy.m1.0")
        recoveries.append(kill_and_restart(cluster, coordinator, committed_more))
        killed.append(f"the transaction coordinator (node {coordinator})")
        await_in_sync(admin, [source, output, TRANSACTION_STATE])
        leaders = partition_leaders(admin, output)
        others = [n for n in leaders.values() if n != coordinator]
        leader = max(set(others), key=others.count)
        led = sorted(p for p, n in leaders.items() if n == leader)
        also = (
            ", the coordinator by then"
            if leader == transaction_coordinator(admin, f"{group}.copy.m1.0")
            else ""
        )
        recoveries.append(kill_and_restart(cluster, leader, committed_more))
        killed.append(f"the leader of output partitions {led} (node {leader}{also})")
        feed.stop()
        assert (feed.failed, len(feed.errors)) == (0, 0), feed.status()
        # Every record fed is in the log, also those acknowledged without an offset after a
        # leader change (Feed._delivered): the input's end offsets count them.
        total = sum(end_offsets(cluster.bootstrap, source, PARTITIONS).values())
        assert total >= len(feed.acked)
        await_committed_to_end(cluster.bootstrap, group, source, alive, "every input committed")
    except BaseException:
        if worker.poll() is None:
            worker.send_signal(signal.SIGABRT)
            worker.wait(10)
        raise
    finally:
        feed.stop()
        if worker.poll() is None:
            stop(worker)
    try:
        check_output_once(
            cluster.bootstrap,
            output,
            total,
            f"exactly_once copier, 3 nodes (RF 3, min.isr 2): kill -9 and restart of "
            f"{killed[0]}, then of {killed[1]}",
            log=log,
            recovery=max(recoveries),
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{lost_outputs(cluster.bootstrap, source, output)}") from None
    admin.delete_topics([source, output])


def kill_and_restart(
    cluster: Cluster, node_id: int, committed_more: Callable[[int, str], None]
) -> float:
    """kill -9 the node and start it again at once, as Kafka's transactions system test
    bounces a broker hard (and as a supervisor restarts it): its leaderships and the
    coordinators it held move as soon as the controller fences its broker session, while its
    JVM boots (20-40 s on the loaded 2-core machine, longer than the worker's recovery). The
    worker must commit more inputs (the seconds from the kill: the recovery, returned), and
    more once the node is serving again."""
    index = next(i for i, node in enumerate(cluster.nodes) if node.node_id == node_id)
    node = cluster.nodes[index]
    cluster.stop_node(index, kill=True)
    killed = time.monotonic()
    node.start()
    committed_more(500, f"after node {node_id} was killed")
    recovery = time.monotonic() - killed
    cluster.wait_ready(nodes=[node])
    committed_more(300, f"with node {node_id} back")
    return recovery


def await_in_sync(admin: AdminClient, topics: list[str]) -> None:
    """Until every replica of these topics' partitions is in sync: a node brought back has
    caught up, so the next one down still leaves min.insync.replicas."""

    def in_sync() -> bool:
        metadata = admin.list_topics(timeout=10).topics
        return all(
            len(p.isrs) == len(p.replicas)
            for topic in topics
            for p in metadata[topic].partitions.values()
        )

    wait_until(in_sync, 60, f"every replica of {topics} in sync", 0.2)


def assert_replicated_transaction_log(admin: AdminClient) -> None:
    """The transaction state log survives one node down: 3 replicas, min.insync.replicas 2."""
    topic = admin.list_topics(TRANSACTION_STATE, timeout=10).topics[TRANSACTION_STATE]
    assert {len(p.replicas) for p in topic.partitions.values()} == {3}
    resource = ConfigResource(ResourceType.TOPIC, TRANSACTION_STATE)
    configs = admin.describe_configs([resource])[resource].result(10)
    assert configs["min.insync.replicas"].value == "2"


def lost_outputs(bootstrap: str, source: str, output: str) -> str:
    """For a failed check: the inputs a second read_committed read of `output` still finds no
    output of (none: the first read stopped short), where each is, and whether its output is
    in the log at all (written in a transaction that was aborted) or not."""
    inputs = {int(m.value()): (m.partition(), m.offset()) for m in _all(bootstrap, source)}  # type: ignore[attr-defined]
    seen = {int(m.value()) for m in _all(bootstrap, output)}  # type: ignore[attr-defined]
    anywhere = {int(m.value()) for m in _all(bootstrap, output, "read_uncommitted")}  # type: ignore[attr-defined]
    lost = sorted(set(inputs) - seen)
    return f"{len(lost)} still lost in a second read (value, partition, offset, aborted): " + (
        ", ".join(f"({v}, {inputs[v][0]}, {inputs[v][1]}, {v in anywhere})" for v in lost[:40])
    )


def _all(bootstrap: str, topic: str, isolation: str = "read_committed") -> list[object]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"diag-{uuid.uuid4().hex}",
            "isolation.level": isolation,
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    records: list[object] = []
    at_end: set[int] = set()
    deadline = time.monotonic() + 60
    try:
        while len(at_end) < PARTITIONS and time.monotonic() < deadline:
            for record in consumer.consume(1000, timeout=0.5):
                if record.error() is None:
                    records.append(record)
                    at_end.discard(record.partition() or 0)
                else:
                    at_end.add(record.partition() or 0)
    finally:
        consumer.close()
    return records

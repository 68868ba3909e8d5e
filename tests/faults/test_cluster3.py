"""The three-node cluster keeps accepting acks=all writes with one node down."""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from kafkaworker.testing.broker import Cluster

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

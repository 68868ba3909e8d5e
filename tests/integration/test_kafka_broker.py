"""The test broker is a real Apache Kafka: topics, produce/consume, group offsets, share groups."""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import (
    Consumer,
    ConsumerGroupTopicPartitions,
    Producer,
    ShareConsumer,
    TopicPartition,
)
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
    ResourceType,
)

from tests.conftest import TopicFactory

pytestmark = pytest.mark.kafka


def produce(bootstrap: str, topic: str, values: list[bytes], **conf: str) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, **conf})
    errors: list[object] = []
    for value in values:
        producer.produce(topic, value, on_delivery=lambda err, _msg: err and errors.append(err))
    assert producer.flush(30) == 0
    assert errors == []


def test_admin_creates_and_deletes_topics(admin: AdminClient) -> None:
    name = f"admin-{uuid.uuid4().hex[:8]}"
    admin.create_topics([NewTopic(name, 3, 1)])[name].result(timeout=30)
    # The controller acknowledges the creation before every broker's metadata has the topic:
    # a loaded machine answered UNKNOWN_TOPIC_OR_PART once right after it (fresh-clone CI).
    deadline = time.monotonic() + 30
    while (found := admin.list_topics(topic=name, timeout=10).topics[name]).error is not None:
        assert time.monotonic() < deadline, f"{name} not in the metadata 30s after creation"
        time.sleep(0.2)
    assert len(found.partitions) == 3

    admin.delete_topics([name], operation_timeout=30)[name].result(timeout=30)
    deadline = time.monotonic() + 30
    while name in admin.list_topics(timeout=10).topics:
        assert time.monotonic() < deadline, f"{name} still listed 30s after deletion"
        time.sleep(0.2)


def test_produce_then_consume_every_message_in_order(
    kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    topic = new_topic(1)
    sent = [f"m{i}".encode() for i in range(100)]
    produce(kafka_bootstrap, topic, sent)

    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": f"g-{topic}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    received: list[bytes] = []
    deadline = time.monotonic() + 30
    while len(received) < len(sent) and time.monotonic() < deadline:
        for msg in consumer.consume(100, timeout=1.0):
            assert msg.error() is None, msg.error()
            received.append(msg.value())
    consumer.close()
    assert received == sent


def test_group_offsets_commit_and_read_back(
    kafka_bootstrap: str, new_topic: TopicFactory, admin: AdminClient
) -> None:
    topic = new_topic(2)
    produce(kafka_bootstrap, topic, [b"x"] * 10)
    group = f"g-{topic}"
    consumer = Consumer(
        {"bootstrap.servers": kafka_bootstrap, "group.id": group, "enable.auto.commit": False}
    )
    consumer.commit(
        offsets=[TopicPartition(topic, 0, 4), TopicPartition(topic, 1, 7)], asynchronous=False
    )
    committed = consumer.committed([TopicPartition(topic, 0), TopicPartition(topic, 1)], 10)
    consumer.close()
    assert [(tp.partition, tp.offset) for tp in committed] == [(0, 4), (1, 7)]

    request = ConsumerGroupTopicPartitions(group)
    result = admin.list_consumer_group_offsets([request])[group].result(timeout=30)
    by_partition = {tp.partition: tp.offset for tp in result.topic_partitions if tp.topic == topic}
    assert by_partition == {0: 4, 1: 7}


def test_share_group_consumes_and_acknowledges(
    kafka_bootstrap: str, new_topic: TopicFactory, admin: AdminClient
) -> None:
    topic = new_topic(2)
    group = f"share-{topic}"
    # Share groups start at the latest offset unless the group says otherwise.
    earliest = ConfigResource(
        ResourceType.GROUP,
        group,
        incremental_configs=[
            ConfigEntry(
                "share.auto.offset.reset", "earliest", incremental_operation=AlterConfigOpType.SET
            )
        ],
    )
    for future in admin.incremental_alter_configs([earliest]).values():
        future.result(timeout=30)
    values = {f"{i}".encode() for i in range(20)}
    produce(kafka_bootstrap, topic, sorted(values))

    consumer = ShareConsumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": group,
            "share.acknowledgement.mode": "explicit",
        }
    )
    consumer.subscribe([topic])
    received: list[bytes] = []
    deadline = time.monotonic() + 60
    while len(received) < len(values) and time.monotonic() < deadline:
        messages = consumer.poll(1.0)
        for msg in messages:
            assert msg.error() is None, msg.error()
            received.append(msg.value())
            consumer.acknowledge(msg)
        if messages:
            consumer.commit_sync()
    consumer.close()
    assert sorted(received) == sorted(values)

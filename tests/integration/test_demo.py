"""`make run` (tools/demo.py) against a real broker: it does not start into a live group."""

from __future__ import annotations

import pytest
from confluent_kafka import Consumer

from tests.conftest import TopicFactory
from tests.support import wait_until
from tools import demo

pytestmark = pytest.mark.kafka


def test_the_demo_refuses_to_start_while_its_group_has_members(
    kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    assert demo.already_running(kafka_bootstrap) is None
    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": demo.GROUP})
    consumer.subscribe([new_topic(1)])
    try:
        wait_until(lambda: consumer.poll(0.2) is None and consumer.assignment(), 30, "joined")
        refused = demo.already_running(kafka_bootstrap)
    finally:
        consumer.close()
    assert refused is not None
    assert refused.startswith(f"group {demo.GROUP!r} has 1 active member(s) (rdkafka)")
    assert "(another `make run`?)" in refused
    assert demo.already_running(kafka_bootstrap) is None  # free again once it left

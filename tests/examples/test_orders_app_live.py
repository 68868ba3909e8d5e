"""The example app against a real broker, with the kafka_worker fixture of the kafkaworker
pytest plugin, as a user with Java would write an end-to-end test."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from apps.orders.app import app
from tests.support import produce, read_topic

pytestmark = pytest.mark.kafka


@pytest.fixture
def order_topics(admin: AdminClient) -> Iterator[None]:
    topics = ["orders", "orders.accepted"]
    for future in admin.create_topics([NewTopic(t, 2, 1) for t in topics]).values():
        future.result(timeout=30)
    yield
    for future in admin.delete_topics([*topics, "orders.dlq"], operation_timeout=30).values():
        future.exception(timeout=30)


def test_orders_are_accepted_end_to_end(
    kafka_broker: str, kafka_worker: Any, order_topics: None
) -> None:
    kafka_worker(app, settings={"commit_interval": 0.2})
    orders = [{"id": i, "customer": f"customer-{i % 3}", "amount": 10.0 + i} for i in range(6)]
    produce(
        kafka_broker,
        "orders",
        [orjson.dumps(o) for o in orders],
        keys=[o["customer"].encode() for o in orders],
    )
    accepted = read_topic(kafka_broker, "orders.accepted", 6)
    assert sorted(orjson.loads(r.value())["id"] for r in accepted) == list(range(6))

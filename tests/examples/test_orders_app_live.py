"""The example app against a real broker, as a user writes it: the kafkaworker pytest plugin's
fixtures and kafkaworker.testing's helpers, nothing else. The docs site shows
this file (docs/testing.md includes it), so what a reader copies is what runs."""

# --8<-- [start:example]
import pytest

from apps.orders.app import app
from kafkaworker.testing import TopicFactory, WorkerFactory, produce, read_topic, wait_for_commit

pytestmark = pytest.mark.kafka


def test_orders_are_accepted_end_to_end(
    kafka_broker: str, kafka_worker: WorkerFactory, kafka_topic: TopicFactory
) -> None:
    orders, accepted = kafka_topic(partitions=2), kafka_topic(partitions=2)
    # The app's own topic names, swapped for this test's (as settings.yaml would).
    topics = {"topics": [orders], "output": accepted, "dlq": f"{orders}.dlq"}
    settings = {"handlers": {"accept_order": topics}, "commit_interval": 0.2}
    kafka_worker(app, settings=settings)

    sent = [{"id": i, "customer": f"customer-{i}", "amount": 10.0 + i} for i in range(6)]
    sent.append({"id": 6, "customer": "customer-13", "amount": 5.0})  # blocked: to the DLQ
    keys = [o["customer"] for o in sent]
    produce(kafka_broker, orders, sent, keys=keys, app=app, settings=settings)  # app's codec

    accepted_ids = [r.json()["id"] for r in read_topic(kafka_broker, accepted, count=6)]
    assert sorted(accepted_ids) == list(range(6))
    [dead] = read_topic(kafka_broker, f"{orders}.dlq", count=1)
    assert dead.header("kw.error.message") == b"customer customer-13 is blocked"
    wait_for_commit(kafka_broker, "orders-service", orders)  # all 7 finished and committed


# --8<-- [end:example]

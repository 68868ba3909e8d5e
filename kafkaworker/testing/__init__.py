"""Testing your handlers: `TestClient` runs an app in-process with no broker and virtual time;
the pytest plugin (pytest_plugin.py, registered when kafkaworker is installed) gives fixtures
for it and for a real Kafka broker (broker.py, which needs Java and Maven, or a running one
named by KAFKAWORKER_TEST_BOOTSTRAP); live.py has the helpers for tests against that broker."""

from kafkaworker.testing.client import Delivery, TestClient
from kafkaworker.testing.live import (
    TopicFactory,
    create_topic,
    delete_topics,
    produce,
    read_topic,
    wait_for_commit,
)
from kafkaworker.testing.producer import MemoryProducer, ProducedRecord
from kafkaworker.testing.worker import WorkerFactory

__all__ = [
    "Delivery",
    "MemoryProducer",
    "ProducedRecord",
    "TestClient",
    "TopicFactory",
    "WorkerFactory",
    "create_topic",
    "delete_topics",
    "produce",
    "read_topic",
    "wait_for_commit",
]

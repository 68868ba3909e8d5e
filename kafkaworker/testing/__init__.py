"""Testing your handlers: `TestClient` runs an app in-process with no broker and virtual time;
the pytest plugin (pytest_plugin.py, registered when kafkaworker is installed) gives fixtures
for it and for a real single-node Kafka broker (broker.py, which needs Java and Maven)."""

from kafkaworker.testing.client import Delivery, TestClient
from kafkaworker.testing.producer import MemoryProducer, ProducedRecord

__all__ = ["Delivery", "MemoryProducer", "ProducedRecord", "TestClient"]

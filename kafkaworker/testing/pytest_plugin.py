"""pytest fixtures for testing kafkaworker apps; registered by the installed package
(the `pytest11` entry point), so they are there in every project that depends on it.

- kafkaworker_client: `kafkaworker_client(app, settings=...)` -> a started TestClient (no
  broker, virtual time), closed after the test.
- kafka_broker: bootstrap.servers of a real broker. KAFKAWORKER_TEST_BOOTSTRAP=host:port
  names a running one (a `make kafka` left running, a CI service: no 20-40 s start per
  session); else a single-node Kafka (KRaft) is started for the session from the Apache
  Kafka jars on Maven Central (needs `java` and `mvn`; the jars are cached under
  ~/.cache/kafkaworker). Without Java or Maven the test is skipped, or fails when the CI
  environment variable is set.
- kafka_worker: `kafka_worker(app, settings=...)` runs the app against kafka_broker in a
  background thread; it is stopped gracefully after the test (and must exit 0).
- kafka_topic: `kafka_topic(partitions=2)` creates a uniquely named topic on kafka_broker
  and deletes it after the test, with the topics named after it (its `.dlq`, `.retry.*`).

The helpers of kafkaworker.testing.live (create_topic, produce, read_topic,
wait_for_commit) take kafka_broker's address.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest

from kafkaworker.app import App
from kafkaworker.runtime.runner import Runner
from kafkaworker.testing.client import TestClient
from kafkaworker.testing.live import TopicFactory, broker_settings, create_topic, delete_topics
from kafkaworker.testing.worker import WorkerFactory, running

# Names a running cluster for kafka_broker (and this project's own suite) to use.
BOOTSTRAP_ENV = "KAFKAWORKER_TEST_BOOTSTRAP"


@pytest.fixture
def kafkaworker_client() -> Iterator[Callable[..., TestClient]]:
    """kafkaworker_client(app, settings=...): a started TestClient, closed after the test."""
    with contextlib.ExitStack() as stack:

        def start(app: App, **options: Any) -> TestClient:
            return stack.enter_context(TestClient(app, **options))

        yield start


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[str]:
    """bootstrap.servers of a real broker: $KAFKAWORKER_TEST_BOOTSTRAP, else a single-node
    Kafka started for the session (Java, Maven)."""
    from kafkaworker.testing.broker import BrokerError, Cluster  # noqa: PLC0415

    external = os.environ.get(BOOTSTRAP_ENV)
    if external:
        yield external
        return
    try:
        # Built in here too: finding java and mvn, and fetching the jars, is the constructor's.
        cluster = Cluster(1)
        cluster.start()
    except BrokerError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"no Kafka broker for this test: {exc}")
    try:
        yield cluster.bootstrap
    finally:
        cluster.cleanup()


@pytest.fixture
def kafka_worker(kafka_broker: str) -> Iterator[WorkerFactory]:
    """kafka_worker(app, settings=...): the app running against kafka_broker in a background
    thread, stopped gracefully after the test."""
    with contextlib.ExitStack() as stack:

        def start(app: App, settings: Mapping[str, Any] | None = None) -> Runner:
            return stack.enter_context(running(app, broker_settings(kafka_broker, app, settings)))

        yield start


@pytest.fixture
def kafka_topic(kafka_broker: str) -> Iterator[TopicFactory]:
    """kafka_topic(partitions=1, config=None) -> the name of a new, uniquely named topic on
    kafka_broker; deleted after the test with the topics named after it (.dlq, .retry.*)."""
    created: list[str] = []

    def create(partitions: int = 1, *, config: Mapping[str, str] | None = None) -> str:
        created.append(create_topic(kafka_broker, partitions=partitions, config=config))
        return created[-1]

    yield create
    if created:
        delete_topics(kafka_broker, *created)

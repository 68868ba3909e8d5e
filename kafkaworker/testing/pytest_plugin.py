"""pytest fixtures for testing kafkaworker apps; registered by the installed package
(the `pytest11` entry point), so they are there in every project that depends on it.

- kafkaworker_client: `kafkaworker_client(app, settings=...)` -> a started TestClient (no
  broker, virtual time), closed after the test.
- kafka_broker: bootstrap.servers of a real single-node Kafka broker (KRaft) for the whole
  session, the Apache Kafka jars from Maven Central (needs `java` and `mvn`; the jars are
  cached under ~/.cache/kafkaworker). Without Java or Maven the test is skipped, or fails
  when the CI environment variable is set.
- kafka_worker: `kafka_worker(app, settings=...)` runs the app against kafka_broker in a
  background thread; it is stopped gracefully after the test (and must exit 0).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest

from kafkaworker.app import App
from kafkaworker.runtime.runner import Runner
from kafkaworker.settings import Settings, settings_for_run
from kafkaworker.testing.client import TestClient
from kafkaworker.testing.worker import running


@pytest.fixture
def kafkaworker_client() -> Iterator[Callable[..., TestClient]]:
    """kafkaworker_client(app, settings=...): a started TestClient, closed after the test."""
    with contextlib.ExitStack() as stack:

        def start(app: App, **options: Any) -> TestClient:
            return stack.enter_context(TestClient(app, **options))

        yield start


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[str]:
    """bootstrap.servers of a real single-node Kafka broker for the session (Java, Maven)."""
    from kafkaworker.testing.broker import BrokerError, Cluster  # noqa: PLC0415

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
def kafka_worker(kafka_broker: str) -> Iterator[Callable[..., Runner]]:
    """kafka_worker(app, settings=...): the app running against kafka_broker in a background
    thread, stopped gracefully after the test."""
    with contextlib.ExitStack() as stack:

        def start(app: App, settings: Mapping[str, Any] | None = None) -> Runner:
            base = app.settings if app.settings is not None else Settings.model_validate({})
            merged = settings_for_run(base, None, settings or {})
            merged = settings_for_run(merged, None, {"kafka": {"bootstrap_servers": kafka_broker}})
            return stack.enter_context(running(app, merged))

        yield start

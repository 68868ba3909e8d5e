"""Registry credentials against the real broker and the real registry (Apicurio 2.6, which
checks credentials only with Keycloak) behind an authenticating reverse proxy, as deployments
often run one (registry_support.CountingProxy with basic_auth: Basic auth, else 401 with
Confluent's JSON error body): the right basic.auth.user.info round-trips through it; a wrong
password is one start-up line naming the URL and what to do, never the secret, with nothing
consumed or committed; a registry URL where nothing listens is one line within the timeout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.schema_registry.error import SchemaRegistryError
from pydantic import BaseModel

from kafkaworker import App, Message, ProduceError, Producer, StartupError
from kafkaworker.errors import SchemaRegistryUnavailable
from kafkaworker.handlers import resolve_specs
from kafkaworker.runtime.runner import Runner
from kafkaworker.serialization.json_schema import JsonSchemaCodec
from kafkaworker.serialization.registry import registry_client
from kafkaworker.testing.jvm import free_port
from kafkaworker.testing.registry import SchemaRegistry
from tests.conftest import TopicFactory
from tests.integration.registry_support import CountingProxy, send
from tests.support import ROOT, committed, end_offsets, make_settings, running

pytestmark = pytest.mark.kafka

USER = "svc-orders"
PASSWORD = "pw-" + uuid.uuid4().hex  # unique: found in a log or a message only if leaked
WRONG = "wrong-" + uuid.uuid4().hex


class Order(BaseModel):
    id: int
    sku: str


@pytest.fixture
def auth_proxy(schema_registry: SchemaRegistry) -> Iterator[CountingProxy]:
    with CountingProxy(schema_registry.url, basic_auth=(USER, PASSWORD)).running() as proxy:
        yield proxy


def _registry(url: str, password: str) -> dict[str, Any]:
    return {"url": url, "config": {"basic.auth.user.info": f"{USER}:{password}"}}


def _run_app(bootstrap: str, topic: str, *, group: str, url: str, password: str) -> list[Order]:
    """What the worker (codec="json_schema", the settings' registry) handles of `topic`'s
    records, all of them (end offsets) awaited."""
    count = sum(end_offsets(bootstrap, topic, 1).values())
    received: list[Order] = []
    done = threading.Event()
    app = App(group)

    @app.handler(topic, codec="json_schema")
    def handle(order: Order) -> None:
        received.append(order)
        if len(received) == count:
            done.set()

    with running(app, make_settings(bootstrap, schema_registry=_registry(url, password))):
        assert done.wait(30), f"{len(received)} of {count} records handled"
    return received


def test_the_right_credentials_round_trip_through_an_authenticating_proxy(
    kafka_bootstrap: str, new_topic: TopicFactory, auth_proxy: CountingProxy
) -> None:
    # The proxy does refuse a client without credentials: the test below relies on it.
    with pytest.raises(SchemaRegistryError) as anonymous:
        registry_client({"url": auth_proxy.url}).get_subjects()
    assert anonymous.value.http_status_code == 401
    assert anonymous.value.error_code == 401
    assert auth_proxy.refused_event.is_set()

    topic = new_topic(1)
    orders = [Order(id=i, sku=f"S{i}") for i in range(5)]
    codec = JsonSchemaCodec({"url": auth_proxy.url, "basic.auth.user.info": f"{USER}:{PASSWORD}"})
    send(kafka_bootstrap, topic, orders, codec)
    assert (
        _run_app(kafka_bootstrap, topic, group=f"g-{topic}", url=auth_proxy.url, password=PASSWORD)
        == orders
    )
    # Registered and read through the proxy, every request with the credentials.
    assert auth_proxy.count("POST", f"/subjects/{topic}-value/versions") == 1, auth_proxy.counts
    assert auth_proxy.count("GET", "/config") == 1, auth_proxy.counts  # the start-up check
    assert any("/schemas/ids/" in path for _, path in auth_proxy.counts), auth_proxy.counts
    assert sum(auth_proxy.refused.values()) == 1, auth_proxy.refused  # the anonymous one only


APP = """
import os
from pydantic import BaseModel
from kafkaworker import App

app = App(os.environ["AUTH_APP_GROUP"])

class Order(BaseModel):
    id: int
    sku: str

@app.handler(os.environ["AUTH_APP_TOPIC"], codec="json_schema")
def handle(order: Order) -> None:
    print("handled", order.id, flush=True)
"""


def test_a_wrong_password_is_one_start_up_line_without_the_secret_and_nothing_is_consumed(
    kafka_bootstrap: str, new_topic: TopicFactory, auth_proxy: CountingProxy, tmp_path: Path
) -> None:
    topic = new_topic(1)
    group = f"g-{topic}"
    orders = [Order(id=i, sku="W") for i in range(3)]
    right = JsonSchemaCodec({"url": auth_proxy.url, "basic.auth.user.info": f"{USER}:{PASSWORD}"})
    send(kafka_bootstrap, topic, orders, right)
    forwarded = sum(auth_proxy.counts.values())
    expected = (
        f"the Schema Registry at {auth_proxy.url} refused the credentials (HTTP 401): "
        "check schema_registry.config basic.auth.user.info"
    )

    # In process: the Runner's StartupError, before any record is handled.
    app = App(group)
    handled: list[Any] = []

    @app.handler(topic, codec="json_schema")
    def handle(msg: Message[Any]) -> None:
        handled.append(msg.value)

    settings = make_settings(kafka_bootstrap, schema_registry=_registry(auth_proxy.url, WRONG))
    with pytest.raises(StartupError) as error:
        Runner(app, settings, resolve_specs(app, settings)).run()
    assert str(error.value) == expected

    # As deployed: `kafkaworker run` with the settings from the environment, logging at DEBUG
    # so that every line it writes is searched for the secret.
    (tmp_path / "auth_app.py").write_text(APP)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]),
        "AUTH_APP_GROUP": group,
        "AUTH_APP_TOPIC": topic,
        "KAFKAWORKER_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap,
        "KAFKAWORKER_LOG_LEVEL": "DEBUG",
        "KAFKAWORKER_SCHEMA_REGISTRY__URL": auth_proxy.url,
        "KAFKAWORKER_SCHEMA_REGISTRY__CONFIG": json.dumps(
            {"basic.auth.user.info": f"{USER}:{WRONG}"}
        ),
    }
    worker = subprocess.run(
        [sys.executable, "-m", "kafkaworker", "run", "auth_app:app"],
        check=False,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = worker.stdout + worker.stderr
    assert worker.returncode == 1, output
    assert worker.stderr.strip().splitlines()[-1] == f"Error: {expected}", output
    assert [line for line in output.splitlines() if "Schema Registry" in line] == [
        f"Error: {expected}"
    ], output
    assert "handled" not in worker.stdout
    assert auth_proxy.refused[("GET", "/apis/ccompat/v7/config")] == 2, auth_proxy.refused
    assert sum(auth_proxy.counts.values()) == forwarded  # nothing got past the proxy

    # The codec's first use outside a worker (a producer's send, a schema not cached yet):
    # one line saying the same, retryable (SchemaRegistryUnavailable), not a bad record.
    wrong = JsonSchemaCodec({"url": auth_proxy.url, "basic.auth.user.info": f"{USER}:{WRONG}"})
    producer = Producer(make_settings(kafka_bootstrap))
    try:
        with pytest.raises(ProduceError) as sent:
            producer.send_sync(topic, Order(id=9, sku="X"), codec=wrong)
    finally:
        producer.close()
    assert isinstance(sent.value.__cause__, SchemaRegistryUnavailable)
    with pytest.raises(SchemaRegistryUnavailable) as decoded:
        wrong.decode(right.encode_for(topic, orders[0]), [])
    for line in (str(sent.value), str(decoded.value)):
        assert "\n" not in line
        assert f"the Schema Registry at {auth_proxy.url} refused the credentials (HTTP 401)" in line
        assert "check schema_registry.config basic.auth.user.info" in line, line

    for text in (str(error.value), output, str(sent.value), str(decoded.value)):
        for secret in (WRONG, PASSWORD, f"{USER}:"):
            assert secret not in text, (secret, text)

    # Nothing lost: no record handled nor committed, all of them there for a fixed worker.
    assert handled == []
    assert committed(kafka_bootstrap, group, topic, 1) == {0: -1001}
    assert end_offsets(kafka_bootstrap, topic, 1) == {0: 3}
    assert (
        _run_app(kafka_bootstrap, topic, group=group, url=auth_proxy.url, password=PASSWORD)
        == orders
    )


def test_a_registry_url_where_nothing_listens_is_one_line_within_the_timeout(
    kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    topic = new_topic(1)
    url = f"http://127.0.0.1:{free_port()}/apis/ccompat/v7"
    timeout = 3
    app = App(f"g-{topic}")

    @app.handler(topic, codec="json_schema")
    def handle(msg: Message[Any]) -> None:
        pass

    registry = {"url": url, "config": {"timeout": timeout, "basic.auth.user.info": f"u:{WRONG}"}}
    settings = make_settings(kafka_bootstrap, schema_registry=registry)
    runner = Runner(app, settings, resolve_specs(app, settings))
    started = time.monotonic()
    with pytest.raises(StartupError) as error:
        runner.run()
    assert time.monotonic() - started < timeout
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"cannot reach the Schema Registry at {url} (")
    assert message.endswith("check schema_registry.url and that the registry is up")
    assert WRONG not in message

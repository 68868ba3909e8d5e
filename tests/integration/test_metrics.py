"""The HTTP endpoint of one worker process: /metrics, /healthz and /readyz (real broker)."""

from __future__ import annotations

import signal
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from kafkaworker import App, Message
from kafkaworker.errors import StartupError
from kafkaworker.handlers import resolve_specs
from kafkaworker.runtime.runner import Runner
from kafkaworker.testing.jvm import free_port
from tests.conftest import TopicFactory
from tests.metrics_support import get, samples, total
from tests.support import WorkerProcess, make_settings, produce, running, wait_until

pytestmark = pytest.mark.kafka


def test_metrics_and_probes_follow_the_work(kafka_bootstrap: str, new_topic: TopicFactory) -> None:
    topic = new_topic(2)
    count = 20
    produce(
        kafka_bootstrap,
        topic,
        [b"%d" % i for i in range(count)],
        partitions=[i % 2 for i in range(count)],
    )
    gate = threading.Event()
    last_gate = threading.Event()
    app = App("metrics-app")

    @app.handler(topic, concurrency=2, codec="raw")
    def handle(msg: Message[Any]) -> None:
        gate.wait(30)
        if msg.value == b"last":
            last_gate.wait(30)

    port = free_port()
    settings = make_settings(kafka_bootstrap, metrics={"port": port, "host": "127.0.0.1"})
    name = "handle"
    with running(app, settings) as runner:
        wait_until(lambda: get(port, "/readyz")[0] == 200, 30, "/readyz 200 once joined")
        assert get(port, "/healthz")[0] == 200
        # Both partitions' first records are in their handlers: every record is unfinished.
        wait_until(
            lambda: total(port, "kafkaworker_consumer_lag", handler=name) == count,
            30,
            f"a lag of {count} while the handlers are blocked",
        )
        assert total(port, "kafkaworker_in_flight_messages", handler=name) == count
        assert total(port, "kafkaworker_assigned_partitions", handler=name) == 2
        assert total(port, "kafkaworker_messages_finished_total", handler=name) == 0
        gate.set()
        wait_until(
            lambda: (
                total(port, "kafkaworker_messages_finished_total", handler=name) == count
                and total(port, "kafkaworker_consumer_lag", handler=name) == 0
            ),
            30,
            "every message finished and no lag left",
        )
        found = samples(port)
        assert total(port, "kafkaworker_messages_consumed_total", handler=name) == count
        assert total(port, "kafkaworker_handler_seconds_total", handler=name) > 0
        assert total(port, "kafkaworker_rebalances_total", handler=name, event="assigned") >= 1
        assert {labels["partition"] for labels, _ in found["kafkaworker_consumer_lag"]} == {
            "0",
            "1",
        }
        assert found["process_resident_memory_bytes"][0][1] > 0
        assert get(port, "/nothing")[0] == 404

        # Draining: not ready any more, still live, until the process exits.
        produce(kafka_bootstrap, topic, [b"last"], partitions=[0])
        wait_until(
            lambda: total(port, "kafkaworker_in_flight_messages", handler=name) == 1,
            30,
            "the last message in its handler",
        )
        runner.stop()
        wait_until(lambda: get(port, "/readyz")[0] == 503, 10, "/readyz 503 while draining")
        status, body = get(port, "/healthz")
        assert status == 200, body
        assert b'"not_ready":["handle"]' in get(port, "/readyz")[1]
        last_gate.set()
    assert get(port, "/metrics")[0] == 0  # the endpoint closed with the runner


def test_a_metrics_port_in_use_is_a_one_line_startup_error(kafka_bootstrap: str) -> None:
    app = App("busy-port")

    @app.handler("whatever")
    def handle(msg: Message[Any]) -> None:
        pass

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = make_settings(kafka_bootstrap, metrics={"port": port, "host": "127.0.0.1"})
        runner = Runner(app, settings, resolve_specs(app, settings))
        with pytest.raises(StartupError) as error:
            runner.run()
    message = str(error.value)
    assert f"cannot serve metrics on 127.0.0.1:{port}" in message
    assert "metrics.port" in message
    assert "\n" not in message


@pytest.mark.parametrize("protocol", ["classic", "consumer"])
def test_a_member_without_partitions_is_ready(
    kafka_bootstrap: str, new_topic: TopicFactory, protocol: str
) -> None:
    """More members than partitions is normal (spares for failover): the spare is ready."""
    topic = new_topic(1)
    app = App("spare-member")

    @app.handler(topic, codec="raw")
    def handle(msg: Message[Any]) -> None:
        pass

    ports = [free_port(), free_port()]
    settings = [
        make_settings(
            kafka_bootstrap,
            kafka={"bootstrap_servers": kafka_bootstrap, "group_protocol": protocol},
            metrics={"port": port, "host": "127.0.0.1"},
        )
        for port in ports
    ]
    with running(app, settings[0]), running(app, settings[1]):
        for port in ports:
            wait_until(lambda port=port: get(port, "/readyz")[0] == 200, 30, f"{port} ready")
        wait_until(
            lambda: (
                sorted(
                    total(port, "kafkaworker_assigned_partitions", handler="handle")
                    for port in ports
                )
                == [0, 1]
            ),
            30,
            "one member with the partition, one without",
        )


def test_the_start_up_line_says_where_metrics_and_the_dashboard_are(
    kafka_bootstrap: str, new_topic: TopicFactory, tmp_path: Path
) -> None:
    """As a user reads it: a real `kafkaworker run --metrics-port` process's start-up line."""
    port = free_port()
    worker = WorkerProcess(
        kafka_bootstrap,
        new_topic(1),
        tmp_path / "record.jsonl",
        KAFKAWORKER_METRICS__HOST="0.0.0.0",
        KAFKAWORKER_METRICS__PORT=str(port),
    ).start()
    try:
        wait_until(lambda: "worker started" in worker.output(), 60, "the start-up line")
    finally:
        worker.signal(signal.SIGTERM)
        assert worker.wait(60) == 0
    [started] = [line for line in worker.output().splitlines() if "worker started" in line]
    assert f"metrics=http://127.0.0.1:{port}/metrics" in started
    assert f"dashboard=http://127.0.0.1:{port}/" in started

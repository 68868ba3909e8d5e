"""The messaging metrics through the OpenTelemetry meter (tracing.metrics: true), read back from
a real collector: Jaeger's own pipeline exports what it receives over OTLP to a Prometheus
page."""

from __future__ import annotations

import re

import orjson
import pytest

from tests.support import wait_until
from tests.tracing.conftest import Traced

pytestmark = pytest.mark.kafka


def _value(page: str, metric: str, **labels: str) -> float | None:
    """The sample of `metric` whose labels include `labels`, if the page has one."""
    for line in page.splitlines():
        name, _, rest = line.partition("{")
        if name != metric:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', rest.rpartition("}")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_the_conventions_metrics_reach_the_collector(traced: Traced) -> None:
    orders, shipments = traced.topic(prefix="orders"), traced.topic(prefix="shipments")
    workers = traced.workers({"orders": orders, "shipments": shipments})
    workers.start(
        "orders",
        "metered-worker",
        KAFKAWORKER_TRACING__METRICS="true",
        OTEL_METRIC_EXPORT_INTERVAL="200",
    )
    for i in range(3):
        traced.producer.send(orders, orjson.dumps({"id": i}))
    expected = {
        ("messaging_client_consumed_messages_total", orders): 3.0,
        ("messaging_process_duration_seconds_count", orders): 3.0,
        ("messaging_client_sent_messages_total", shipments): 3.0,
        ("messaging_client_operation_duration_seconds_count", shipments): 3.0,
    }

    def measured() -> dict[tuple[str, str], float | None]:
        page = traced.jaeger.metrics()
        return {
            (metric, topic): _value(page, metric, messaging_destination_name=topic)
            for metric, topic in expected
        }

    wait_until(lambda: measured() == expected, 60, f"the metrics {expected}")
    page = traced.jaeger.metrics()
    labels = {"messaging_destination_name": orders, "messaging_system": "kafka"}
    assert (
        _value(
            page,
            "messaging_process_duration_seconds_count",
            messaging_operation_name="process",
            messaging_consumer_group_name="traced",
            **labels,
        )
        == 3.0
    )

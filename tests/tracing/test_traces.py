"""One trace from a producer through two worker processes, checked in a real Jaeger: the spans,
their kinds, parents and attributes (the messaging conventions), and the log lines written in
the handler's span."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest

from tests.conftest import TopicFactory
from tests.tracing.conftest import TracedProducer, Workers
from tests.tracing.jaeger import Jaeger, Span, named

pytestmark = pytest.mark.kafka


def test_one_trace_from_the_producer_through_a_worker_and_its_output_to_the_next(
    jaeger: Jaeger,
    traced_producer: TracedProducer,
    traced_workers: Callable[[dict[str, str]], Workers],
    new_topic: TopicFactory,
    kind: str,
) -> None:
    orders, shipments = new_topic(prefix="orders"), new_topic(prefix="shipments")
    workers = traced_workers({"orders": orders, "shipments": shipments})
    async_env = {"TRACED_ASYNC": "1"} if kind == "async" else {}
    workers.start("orders", "orders-worker", **async_env)
    workers.start("shipments", "shipments-worker", **async_env)

    trace_id, sent_id = traced_producer.send(orders, orjson.dumps({"id": 7}), key=b"order-7")

    def complete(spans: list[Span]) -> bool:
        return (
            named(spans, f"process {shipments}", "shipments-worker") is not None
            and named(spans, f"send {shipments}", "orders-worker") is not None
            and named(spans, f"process {orders}", "orders-worker") is not None
        )

    spans = jaeger.wait_spans(trace_id, complete, "the process and send spans of both workers")
    process = named(spans, f"process {orders}", "orders-worker")
    output = named(spans, f"send {shipments}", "orders-worker")
    downstream = named(spans, f"process {shipments}", "shipments-worker")
    assert process is not None and output is not None and downstream is not None
    # One trace: each span the child of the one before it, across Kafka and processes.
    assert process.parent == sent_id
    assert output.parent == process.span_id
    assert downstream.parent == output.span_id
    assert {s.trace_id for s in (process, output, downstream)} == {trace_id}
    assert (process.kind, output.kind, downstream.kind) == ("consumer", "producer", "consumer")
    expected: dict[str, Any] = {
        "messaging.system": "kafka",
        "messaging.operation.name": "process",
        "messaging.operation.type": "process",
        "messaging.destination.name": orders,
        "messaging.destination.partition.id": "0",
        "messaging.consumer.group.name": "traced",
        "messaging.kafka.offset": 0,
        "messaging.kafka.message.key": "order-7",
        "messaging.client.id": "traced.orders",
    }
    assert {k: process.tags.get(k) for k in expected} == expected
    assert "error.type" not in process.tags
    assert {k: output.tags.get(k) for k in expected if "consumer" not in k} == {
        **{k: v for k, v in expected.items() if "consumer" not in k},
        "messaging.operation.name": "send",
        "messaging.operation.type": "send",
        "messaging.destination.name": shipments,
        "messaging.client.id": "traced.producer",
    }
    # The handler's log line names the trace and its span: from the line to the trace.
    handled = [line for line in workers.lines("orders-worker") if line["event"] == "order handled"]
    assert [(line["trace_id"], line["span_id"]) for line in handled] == [
        (trace_id, process.span_id)
    ]

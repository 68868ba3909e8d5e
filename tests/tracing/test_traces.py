"""One trace from a producer through two worker processes, checked in a real Jaeger: the spans,
their kinds, parents and attributes (the messaging conventions), and the log lines written in
the handler's span."""

from __future__ import annotations

import signal
from typing import Any

import orjson
import pytest

from kafkaworker.testing.jaeger import Span, named
from tests.support import read_topic, wait_until
from tests.tracing.conftest import Traced, Workers

pytestmark = pytest.mark.kafka


def test_one_trace_from_the_producer_through_a_worker_and_its_output_to_the_next(
    traced: Traced, kind: str, kafka_bootstrap: str
) -> None:
    orders, shipments = traced.topic(prefix="orders"), traced.topic(prefix="shipments")
    workers = traced.workers({"orders": orders, "shipments": shipments})
    async_env = {"TRACED_ASYNC": "1"} if kind == "async" else {}
    workers.start("orders", "orders-worker", **async_env)
    workers.start("shipments", "shipments-worker", **async_env)

    trace_id, sent_id = traced.producer.send(
        orders, orjson.dumps({"id": 7}), key=b"order-7", baggage={"tenant": "acme"}
    )

    def complete(spans: list[Span]) -> bool:
        return (
            named(spans, f"process {shipments}", "shipments-worker") is not None
            and named(spans, f"send {shipments}", "orders-worker") is not None
            and named(spans, f"process {orders}", "orders-worker") is not None
        )

    spans = traced.jaeger.wait_spans(
        trace_id, complete, "the process and send spans of both workers"
    )
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
    # The output carries the output's span, and the producer's baggage on.
    (record,) = read_topic(kafka_bootstrap, shipments, 1)
    headers = dict(record.headers())
    version, carried_trace, carried_span, flags = headers["traceparent"].decode().split("-")
    assert (version, carried_trace, carried_span) == ("00", trace_id, output.span_id)
    assert int(flags, 16) & 1  # sampled (W3C level 2 may set the random bit too)
    assert headers["baggage"] == b"tenant=acme"


def test_the_spans_of_the_last_messages_are_flushed_when_the_worker_stops(
    traced: Traced,
) -> None:
    shipments = traced.topic(prefix="shipments")
    workers = traced.workers({"shipments": shipments})
    # The batch processor would wait a minute: only the flush at shutdown sends the span.
    worker = workers.start("shipments", "flushed-worker", OTEL_BSP_SCHEDULE_DELAY="60000")
    trace_id, sent_id = traced.producer.send(shipments, orjson.dumps({"id": 8}))
    _logged_trace(workers, "flushed-worker", "shipment handled")
    assert traced.jaeger.spans(trace_id) == [] or all(
        s.service != "flushed-worker" for s in traced.jaeger.spans(trace_id)
    )
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(60) == 0
    spans = traced.jaeger.wait_spans(
        trace_id, lambda s: named(s, f"process {shipments}") is not None, "the flushed span", 10
    )
    process = named(spans, f"process {shipments}", "flushed-worker")
    assert process is not None and process.parent == sent_id


def _logged_trace(workers: Workers, service: str, event: str) -> tuple[str, str]:
    """(trace id, span id) of the first log line `event` of the service's processes."""
    line = wait_until(
        lambda: next((x for x in workers.lines(service) if x["event"] == event), None),
        60,
        f"{event!r} in the log of {service}",
    )
    return line["trace_id"], line["span_id"]


def test_trace_parent_link_starts_a_new_trace_that_links_to_the_producer(traced: Traced) -> None:
    linked = traced.topic(prefix="linked")
    workers = traced.workers({"linked": linked})
    workers.start("linked", "linked-worker")
    trace_id, sent_id = traced.producer.send(linked, orjson.dumps({"id": 1}))
    own_trace, span_id = _logged_trace(workers, "linked-worker", "linked handled")
    assert own_trace != trace_id
    spans = traced.jaeger.wait_spans(own_trace, bool, "the linked process span")
    (process,) = spans
    assert (process.name, process.span_id, process.parent) == (f"process {linked}", span_id, None)
    assert process.links == [(trace_id, sent_id)]


def test_a_batch_handler_span_links_each_message(traced: Traced) -> None:
    batch = traced.topic(prefix="batch")
    # Produced before the worker starts: its first fetch takes the three as one batch.
    sent = [traced.producer.send(batch, orjson.dumps({"id": i})) for i in range(3)]
    workers = traced.workers({"batch": batch})
    workers.start("batched", "batch-worker")
    own_trace, span_id = _logged_trace(workers, "batch-worker", "batch handled")
    (process,) = traced.jaeger.wait_spans(own_trace, bool, "the batch's process span")
    assert (process.name, process.span_id, process.parent) == (f"process {batch}", span_id, None)
    assert process.tags["messaging.batch.message_count"] == 3
    assert process.links == sent
    assert process.kind == "consumer"


def test_each_of_processes_n_continues_the_traces_of_the_records_it_handles(traced: Traced) -> None:
    orders, shipments = traced.topic(2, prefix="orders"), traced.topic(prefix="shipments")
    workers = traced.workers({"orders": orders, "shipments": shipments})
    workers.start("orders", "orders-worker", "--processes", "2")
    pids: set[int] = set()
    # Keys spread over both partitions, so over both processes once both have joined.
    for i in range(40):
        trace_id, sent_id = traced.producer.send(orders, orjson.dumps({"id": i}), f"k{i}".encode())

        def processed(spans: list[Span]) -> bool:
            return named(spans, f"send {shipments}") is not None

        spans = traced.jaeger.wait_spans(trace_id, processed, "the worker's output span")
        process = named(spans, f"process {orders}")
        output = named(spans, f"send {shipments}")
        assert process is not None and output is not None
        assert process.parent == sent_id and output.parent == process.span_id
        assert process.resource["process.pid"] == output.resource["process.pid"]
        pids.add(process.resource["process.pid"])
        if len(pids) == 2:
            break
    assert len(pids) == 2, pids


def test_a_queue_mode_handler_continues_the_producers_trace(traced: Traced, kind: str) -> None:
    queue = traced.topic(prefix="queue")
    group = f"{queue}-share"
    workers = traced.workers({"queue": queue, "queue_group": group})
    workers.start("queued", "queue-worker", **({"TRACED_ASYNC": "1"} if kind == "async" else {}))
    trace_id, sent_id = traced.producer.send(queue, orjson.dumps({"id": 4}))
    spans = traced.jaeger.wait_spans(
        trace_id, lambda s: named(s, f"process {queue}") is not None, "the share group's span"
    )
    process = named(spans, f"process {queue}", "queue-worker")
    assert process is not None
    assert (process.parent, process.kind) == (sent_id, "consumer")
    assert process.tags["messaging.consumer.group.name"] == group
    assert process.tags["messaging.kafka.offset"] == 0

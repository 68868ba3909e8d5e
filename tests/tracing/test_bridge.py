"""One trace from a gRPC client through the bridge, Kafka, a worker and its output to the next
worker, checked in a real Jaeger: the client's context goes in the call's metadata."""

from __future__ import annotations

import grpc
import orjson
import pytest
from confluent_kafka.admin import AdminClient
from opentelemetry import trace

from apps.bridge.proto import bridge_pb2, bridge_pb2_grpc
from kafkaworker.testing.jaeger import Span, named
from kafkaworker.tracing.carrier import inject
from tests.bridge.conftest import BridgeProcess
from tests.bridge.test_bridge import in_metadata
from tests.tracing.conftest import Traced

pytestmark = pytest.mark.kafka


def test_one_trace_from_a_grpc_client_through_the_bridge_to_the_next_worker(
    traced: Traced, kafka_bootstrap: str
) -> None:
    orders, shipments = traced.topic(prefix="orders"), traced.topic(prefix="shipments")
    # The bridge answers NOT_FOUND for a topic not in the broker's metadata yet.
    in_metadata(AdminClient({"bootstrap.servers": kafka_bootstrap}), orders, shipments)
    workers = traced.workers({"orders": orders, "shipments": shipments})
    workers.start("orders", "orders-worker")
    workers.start("shipments", "shipments-worker")
    bridge = BridgeProcess(
        kafka_bootstrap,
        env={k: v for k, v in workers.env.items() if k.startswith(("OTEL_", "KAFKAWORKER_"))}
        | {"OTEL_SERVICE_NAME": "bridge"},
    ).started()
    try:
        # The client's own span, its context in the call's metadata.
        call = traced.producer.tracer.start_span("OrderBridge/Publish", kind=trace.SpanKind.CLIENT)
        metadata = [
            (name, value.decode()) for name, value in inject([], trace.set_span_in_context(call))
        ]
        with grpc.insecure_channel(bridge.address) as channel:
            reply = bridge_pb2_grpc.OrderBridgeStub(channel).Publish(
                bridge_pb2.PublishRequest(topic=orders, value=orjson.dumps({"id": 3})),
                metadata=metadata,
                timeout=30,
            )
        call.end()
        assert reply.topic == orders
        context = call.get_span_context()
        trace_id, client_id = format(context.trace_id, "032x"), format(context.span_id, "016x")

        wanted = [
            ("kafkaworker.bridge.v1.OrderBridge/Publish", "bridge"),
            (f"send {orders}", "bridge"),
            (f"process {orders}", "orders-worker"),
            (f"send {shipments}", "orders-worker"),
            (f"process {shipments}", "shipments-worker"),
        ]

        def complete(spans: list[Span]) -> bool:
            # Every one: each process exports on its own schedule, so the last worker's span
            # can reach Jaeger before an earlier process's (a CI run found one missing when
            # only the last was waited for).
            return all(named(spans, name, service) is not None for name, service in wanted)

        spans = traced.jaeger.wait_spans(
            trace_id, complete, "the spans from the client to the last worker"
        )
    finally:
        assert bridge.terminate() == 0, bridge.output()
    server = named(spans, "kafkaworker.bridge.v1.OrderBridge/Publish", "bridge")
    sent = named(spans, f"send {orders}", "bridge")
    process = named(spans, f"process {orders}", "orders-worker")
    output = named(spans, f"send {shipments}", "orders-worker")
    downstream = named(spans, f"process {shipments}", "shipments-worker")
    assert None not in (server, sent, process, output, downstream), spans
    assert server is not None and sent is not None and process is not None
    assert output is not None and downstream is not None
    assert (server.parent, server.kind, server.tags["rpc.system"]) == (client_id, "server", "grpc")
    assert (sent.parent, sent.kind) == (server.span_id, "producer")
    assert sent.tags["messaging.kafka.offset"] == reply.offset
    assert process.parent == sent.span_id
    assert output.parent == process.span_id
    assert downstream.parent == output.span_id

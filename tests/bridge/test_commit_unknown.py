"""The one answer the bridge cannot make certain: the commit of an order's transaction was
sent and its answer did not come back in time. The broker committed it (the proxy in front
of it held only the answer), the bridge said DEADLINE_EXCEEDED "may have been written", the
caller placed the order again with the same order_id, and the worker confirmed it once."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator

import grpc
import orjson
import pytest

from apps.bridge.proto import bridge_pb2 as pb
from apps.bridge.proto import bridge_pb2_grpc
from apps.bridge.worker import app as worker_app
from kafkaworker.testing.broker import BrokerError, Cluster
from kafkaworker.testing.jvm import free_port
from tests.bridge.commit_hold import CommitHold
from tests.bridge.conftest import BridgeFactory, committed_records
from tests.bridge.test_broker_lost import create_topic
from tests.support import make_settings, read_topic, running

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


@pytest.fixture
def held_broker() -> Iterator[tuple[Cluster, CommitHold]]:
    """A broker of this test's own that clients reach only through a CommitHold proxy."""
    link_port, broker_port = free_port(), free_port()
    hold = CommitHold(link_port, broker_port).start()
    try:
        cluster = Cluster(
            1,
            heap="512m",
            port=broker_port,
            properties={"advertised.listeners": f"PLAINTEXT://127.0.0.1:{link_port}"},
        )
    except BrokerError as exc:
        hold.close()
        if os.environ.get("CI"):
            raise
        pytest.skip(f"no Kafka broker for this test: {exc}")
    try:
        cluster.start()
        yield cluster, hold
    finally:
        cluster.cleanup()
        hold.close()


def place(stub: bridge_pb2_grpc.OrderBridgeStub, order_id: str) -> tuple[grpc.StatusCode, str]:
    request = pb.PlaceOrderRequest(
        order_id=order_id,
        customer_id="customer-1",  # one key: the worker handles these in order
        currency="EUR",
        lines=[pb.OrderLine(sku="A", quantity=1, unit_price_cents=100)],
    )
    try:
        stub.PlaceOrder(request, timeout=60)
    except grpc.RpcError as exc:
        assert isinstance(exc, grpc.Call)
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


def test_an_order_whose_commit_is_unanswered_may_be_written_and_its_retry_is_confirmed_once(
    held_broker: tuple[Cluster, CommitHold], start_bridge: BridgeFactory
) -> None:
    cluster, hold = held_broker
    for topic in ("orders.placed", "orders.confirmed"):
        create_topic(cluster.bootstrap, topic)
    settings = make_settings(cluster.bootstrap, commit_interval=0.2)
    with running(worker_app, settings):
        bridge = start_bridge("--publish-timeout", "3", bootstrap=cluster.bootstrap)
        channel = grpc.insecure_channel(bridge.address)
        stub = bridge_pb2_grpc.OrderBridgeStub(channel)
        try:
            assert place(stub, "o-before") == (grpc.StatusCode.OK, "")

            hold.armed.set()
            code, details = place(stub, "o-maybe")
            assert hold.holding.is_set()  # the commit reached the broker
            assert code is grpc.StatusCode.DEADLINE_EXCEEDED, details
            assert "may have been written" in details
            assert "same order_id" in details
            hold.release()
            # The bridge resumes the commit and learns it went through.
            bridge.wait_for_line(r"a transaction told MaybeWritten committed")

            assert place(stub, "o-maybe") == (grpc.StatusCode.OK, "")  # the caller's retry
            assert place(stub, "o-after") == (grpc.StatusCode.OK, "")
            placed = Counter(
                orjson.loads(r.value())["order_id"]
                for r in committed_records(cluster.bootstrap, "orders.placed", 1)
            )
            assert placed == {"o-before": 1, "o-maybe": 2, "o-after": 1}

            # o-after follows both o-maybe events on its key: once it is confirmed, so were they.
            confirmed: Counter[str] = Counter()
            while "o-after" not in confirmed:
                records = read_topic(cluster.bootstrap, "orders.confirmed", len(confirmed) + 1)
                confirmed = Counter(orjson.loads(r.value())["order_id"] for r in records)
            assert confirmed == {"o-before": 1, "o-maybe": 1, "o-after": 1}
        finally:
            channel.close()

"""The bridge end to end: RPCs over a real gRPC channel to a bridge process, records on the
real broker, the consumer app (apps/bridge/worker.py) handling them in a kafka_worker."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any, NamedTuple

import grpc
import orjson
import pytest
from confluent_kafka.admin import AdminClient, NewTopic
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc  # type: ignore[import-untyped]
from grpc_reflection.v1alpha import reflection_pb2  # type: ignore[import-untyped]
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (  # type: ignore[import-untyped]
    ProtoReflectionDescriptorDatabase,
)

from apps.bridge import client
from apps.bridge.events import CONTENT_TYPE, IDEMPOTENCY_KEY, Format
from apps.bridge.proto import bridge_pb2 as pb
from apps.bridge.proto import bridge_pb2_grpc
from apps.bridge.worker import app as worker_app
from kafkaworker.testing.broker import Secured
from kafkaworker.testing.jvm import free_port
from tests.bridge.conftest import ROOT, BridgeFactory, BridgeProcess, committed_records
from tests.conftest import TopicFactory
from tests.support import end_offsets, read_topic, wait_until

pytestmark = pytest.mark.kafka
SERVICE = "kafkaworker.bridge.v1.OrderBridge"


def order(order_id: str, customer: str = "customer-1", **changes: Any) -> pb.PlaceOrderRequest:
    fields: dict[str, Any] = {
        "order_id": order_id,
        "customer_id": customer,
        "currency": "EUR",
        "lines": [pb.OrderLine(sku="A", quantity=2, unit_price_cents=150)],
        **changes,
    }
    return pb.PlaceOrderRequest(**fields)


@pytest.fixture
def channel_to() -> Iterator[Any]:
    """channel_to(address): a channel closed after the test."""
    channels: list[grpc.Channel] = []

    def open_channel(address: str) -> grpc.Channel:
        channels.append(grpc.insecure_channel(address))
        return channels[-1]

    yield open_channel
    for channel in channels:
        channel.close()


def in_metadata(admin: AdminClient, *topics: str) -> None:
    """Wait for topics just created to be in the broker's metadata: CreateTopics answers
    before the broker's metadata cache has them, and a worker starting in between fails on a
    missing output topic (seen here, about one run in three)."""

    def listed() -> bool:
        found = admin.list_topics(timeout=5).topics
        return all(t in found and found[t].error is None for t in topics)

    wait_until(listed, 30, f"topics {topics} in the metadata")


def stub_for(channel: grpc.Channel) -> bridge_pb2_grpc.OrderBridgeStub:
    return bridge_pb2_grpc.OrderBridgeStub(channel)


class Refused(NamedTuple):
    code: grpc.StatusCode
    details: str


def rpc_error(call: Any, *args: Any, **kwargs: Any) -> Refused:
    """The status an RPC that must fail failed with."""
    with pytest.raises(grpc.RpcError) as raised:
        call(*args, **kwargs)
    error = raised.value
    assert isinstance(error, grpc.Call)  # what grpc raises for a finished RPC
    return Refused(error.code(), error.details() or "")


@pytest.mark.parametrize("fmt", list(Format))
def test_placed_orders_reach_the_handler(
    *,
    fmt: Format,
    admin: AdminClient,
    kafka_bootstrap: str,
    new_topic: TopicFactory,
    start_bridge: BridgeFactory,
    kafka_worker: Any,
    channel_to: Any,
) -> None:
    orders, confirmed, dlq = new_topic(3, prefix="orders"), new_topic(), new_topic()
    in_metadata(admin, orders, confirmed, dlq)
    kafka_worker(
        worker_app,
        settings={
            "commit_interval": 0.2,
            "handlers": {"confirm_order": {"topics": [orders], "output": confirmed, "dlq": dlq}},
        },
    )
    bridge = start_bridge("--orders-topic", orders, "--format", fmt.value)
    stub = stub_for(channel_to(bridge.address))
    replies = {}
    for i in range(8):
        request = order(
            f"o-{i}",
            customer=f"customer-{i % 3}",
            lines=[pb.OrderLine(sku="A", quantity=i + 1, unit_price_cents=100)],
        )
        replies[request.order_id] = (request, stub.PlaceOrder(request, timeout=30))

    # The answer says where the broker wrote each event, and the handler read it there.
    for record in read_topic(kafka_bootstrap, confirmed, 8):
        confirmation = orjson.loads(record.value())
        request, reply = replies[confirmation["order_id"]]
        assert confirmation["event"] == {
            "topic": reply.topic,
            "partition": reply.partition,
            "offset": reply.offset,
        }
        assert confirmation["customer_id"] == request.customer_id
        assert confirmation["total_cents"] == request.lines[0].quantity * 100
        assert reply.timestamp_ms > 0
    assert sorted(
        orjson.loads(r.value())["order_id"] for r in read_topic(kafka_bootstrap, confirmed, 8)
    ) == sorted(replies)

    # Keyed by customer: one customer's orders share a partition, in the order placed.
    events = read_topic(kafka_bootstrap, orders, 8)
    for record in events:
        order_id = orjson.loads(record.value())["order_id"] if fmt is Format.JSON else None
        content_type, idempotency_key = record.headers()
        assert content_type == (CONTENT_TYPE, fmt.content_type)
        assert idempotency_key[0] == IDEMPOTENCY_KEY
        assert order_id in (None, idempotency_key[1].decode())
    by_customer: dict[str, list[tuple[int, int]]] = {}
    for request, reply in replies.values():
        by_customer.setdefault(request.customer_id, []).append((reply.partition, reply.offset))
    for customer, places in by_customer.items():
        assert len({partition for partition, _ in places}) == 1, customer
        assert places == sorted(places), customer
        keys = {r.key() for r in events if (r.partition(), r.offset()) in places}
        assert keys == {customer.encode()}


def test_publish_writes_the_record_as_given(
    kafka_bootstrap: str, new_topic: TopicFactory, start_bridge: BridgeFactory, channel_to: Any
) -> None:
    topic = new_topic(2)
    bridge = start_bridge()
    stub = stub_for(channel_to(bridge.address))
    headers = [pb.Header(name="source", value=b"grpc"), pb.Header(name="source", value=b"twice")]
    given = stub.Publish(
        pb.PublishRequest(topic=topic, key=b"k-1", value=b"\x00raw\xff", headers=headers),
        timeout=30,
    )
    tombstone = stub.Publish(pb.PublishRequest(topic=topic, key=b"k-1"), timeout=30)
    unkeyed = stub.Publish(pb.PublishRequest(topic=topic, value=b""), timeout=30)

    records = {(r.partition(), r.offset()): r for r in read_topic(kafka_bootstrap, topic, 3)}
    first = records[given.partition, given.offset]
    assert (first.key(), first.value()) == (b"k-1", b"\x00raw\xff")
    assert first.headers() == [("source", b"grpc"), ("source", b"twice")]
    second = records[tombstone.partition, tombstone.offset]
    assert (second.key(), second.value()) == (b"k-1", None)  # a tombstone, not b""
    third = records[unkeyed.partition, unkeyed.offset]
    assert (third.key(), third.value()) == (None, b"")  # a null key, an empty value
    assert given.topic == topic


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (order("o-1", customer=""), "customer_id"),
        (order(""), "order_id"),
        (order("o-1", lines=[]), "lines"),
        (
            order("o-1", lines=[pb.OrderLine(sku="A", quantity=1), pb.OrderLine(quantity=1)]),
            "lines[1].sku",
        ),
        (order("o-1", lines=[pb.OrderLine(sku="A", quantity=-3)]), "lines[0].quantity"),
        (order("o-1", currency="euro"), "currency"),
    ],
)
def test_an_invalid_order_is_refused_naming_its_field(
    *,
    request_: pb.PlaceOrderRequest,
    field: str,
    kafka_bootstrap: str,
    new_topic: TopicFactory,
    start_bridge: BridgeFactory,
    channel_to: Any,
) -> None:
    orders = new_topic(1)
    bridge = start_bridge("--orders-topic", orders)
    error = rpc_error(stub_for(channel_to(bridge.address)).PlaceOrder, request_, timeout=30)
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert error.details.startswith(f"{field}: "), error.details
    assert end_offsets(kafka_bootstrap, orders, 1) == {0: 0}  # nothing was written


def test_bad_publish_requests(
    new_topic: TopicFactory, start_bridge: BridgeFactory, channel_to: Any
) -> None:
    topic = new_topic(1)
    stub = stub_for(channel_to(start_bridge().address))
    bad_name = rpc_error(stub.Publish, pb.PublishRequest(topic="no spaces"), timeout=30)
    assert (bad_name.code, bad_name.details.split(":")[0]) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "topic",
    )
    no_name = rpc_error(
        stub.Publish,
        pb.PublishRequest(topic=topic, headers=[pb.Header(name="a"), pb.Header(value=b"x")]),
        timeout=30,
    )
    assert no_name.code is grpc.StatusCode.INVALID_ARGUMENT
    assert no_name.details.startswith("headers[1].name: ")
    # Over the broker's message.max.bytes (1 MB), under gRPC's 4 MB: librdkafka refuses it.
    too_large = rpc_error(
        stub.Publish, pb.PublishRequest(topic=topic, value=b"x" * 2_000_000), timeout=30
    )
    assert too_large.code is grpc.StatusCode.INVALID_ARGUMENT
    assert too_large.details.startswith("value: ")


def test_an_unknown_topic_is_not_found_at_once_until_it_is_created(
    admin: AdminClient, start_bridge: BridgeFactory, channel_to: Any
) -> None:
    topic = f"later-{uuid.uuid4().hex[:12]}"
    bridge = start_bridge("--orders-topic", topic)
    stub = stub_for(channel_to(bridge.address))
    started = time.monotonic()
    missing = rpc_error(stub.Publish, pb.PublishRequest(topic=topic, value=b"x"), timeout=30)
    assert missing.code is grpc.StatusCode.NOT_FOUND
    assert topic in missing.details
    # From cluster metadata, not after librdkafka's 30 s topic.metadata.propagation.max.ms.
    assert time.monotonic() - started < 5
    assert rpc_error(stub.PlaceOrder, order("o-1"), timeout=30).code is grpc.StatusCode.NOT_FOUND
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(timeout=30)
    try:
        assert stub.PlaceOrder(order("o-1"), timeout=30).topic == topic
    finally:
        admin.delete_topics([topic], operation_timeout=30)[topic].exception(timeout=30)


def test_health_and_reflection(start_bridge: BridgeFactory, channel_to: Any) -> None:
    channel = channel_to(start_bridge().address)
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", SERVICE):
        answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING, service

    database = ProtoReflectionDescriptorDatabase(channel)
    assert set(database.get_services()) >= {
        SERVICE,
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
    # What grpcurl does: the service and its messages from the server alone.
    pool = descriptor_pool.DescriptorPool(database)
    found = pool.FindServiceByName(SERVICE)
    assert [m.name for m in found.methods] == ["PlaceOrder", "Publish"]
    assert found.methods_by_name["PlaceOrder"].input_type.fields_by_name["customer_id"]


def test_reflection_v1_as_newer_clients_ask_it(
    start_bridge: BridgeFactory, channel_to: Any
) -> None:
    """grpc.reflection.v1, which grpcurl and others ask before v1alpha: it lists the services
    and describes the bridge's, and itself."""
    info = channel_to(start_bridge().address).stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    listed, described, itself = info(
        iter(
            [
                reflection_pb2.ServerReflectionRequest(list_services=""),
                reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE),
                reflection_pb2.ServerReflectionRequest(
                    file_containing_symbol="grpc.reflection.v1.ServerReflection"
                ),
            ]
        ),
        timeout=10,
    )
    names = {s.name for s in listed.list_services_response.service}
    assert {SERVICE, "grpc.reflection.v1.ServerReflection"} <= names
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in described.file_descriptor_response.file_descriptor_proto
    ]
    assert any(f.package == "kafkaworker.bridge.v1" for f in files)
    [v1] = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in itself.file_descriptor_response.file_descriptor_proto
    ]
    assert (v1.package, v1.service[0].method[0].input_type) == (
        "grpc.reflection.v1",
        ".grpc.reflection.v1.ServerReflectionRequest",
    )


def test_an_unreachable_cluster_is_unavailable_within_the_timeouts(
    start_bridge: BridgeFactory, channel_to: Any
) -> None:
    nowhere = f"127.0.0.1:{free_port()}"  # nothing listens there
    bridge = start_bridge("--metadata-timeout", "2", "--publish-timeout", "3", bootstrap=nowhere)
    channel = channel_to(bridge.address)
    health = health_pb2_grpc.HealthStub(channel)
    answer = health.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=10)
    assert answer.status == health_pb2.HealthCheckResponse.NOT_SERVING
    stub = stub_for(channel)
    for call, request in (
        (stub.PlaceOrder, order("o-1")),
        (stub.Publish, pb.PublishRequest(topic="orders", value=b"x")),
    ):
        started = time.monotonic()
        error = rpc_error(call, request, timeout=30)
        took = time.monotonic() - started
        assert error.code is grpc.StatusCode.UNAVAILABLE, error.details
        assert nowhere in error.details
        assert took < 2 + 3, took  # the metadata timeout and some slack; never the 30 s


def test_sigterm_lets_the_rpc_in_flight_finish_and_refuses_new_ones(
    kafka_bootstrap: str, new_topic: TopicFactory, start_bridge: BridgeFactory, channel_to: Any
) -> None:
    orders = new_topic(1)
    # Each record waits 2 s in librdkafka (linger.ms) before it is sent: the RPC is in flight
    # for that long.
    bridge = start_bridge(
        "--orders-topic",
        orders,
        "--log-level",
        "debug",
        env={"KAFKAWORKER_KAFKA__PRODUCER": '{"linger.ms": 2000}'},
    )
    in_flight = stub_for(channel_to(bridge.address)).PlaceOrder.future(
        order("o-in-flight"), timeout=30
    )
    bridge.wait_for_line(r"rpc received.*o-in-flight")
    bridge.process.send_signal(signal.SIGTERM)
    bridge.wait_for_line(r"no new RPCs")
    late = rpc_error(stub_for(channel_to(bridge.address)).PlaceOrder, order("o-late"), timeout=10)
    assert late.code is grpc.StatusCode.UNAVAILABLE
    assert not in_flight.done()  # still lingering: the SIGTERM came while it was in flight
    reply = in_flight.result(timeout=30)
    assert bridge.process.wait(30) == 0, bridge.output()
    [record] = read_topic(kafka_bootstrap, orders, 1)
    assert (record.partition(), record.offset()) == (reply.partition, reply.offset)
    # And o-late was not written.
    assert [r.offset() for r in committed_records(kafka_bootstrap, orders, 1)] == [reply.offset]


def test_sigterm_flushes_what_the_producer_still_holds(
    kafka_bootstrap: str, new_topic: TopicFactory, start_bridge: BridgeFactory, channel_to: Any
) -> None:
    orders = new_topic(1)
    # The record would wait 20 s (linger.ms) before being sent; its caller gives up after
    # 0.5 s, which cancels the RPC but not the record in librdkafka's queue.
    bridge = start_bridge(
        "--orders-topic",
        orders,
        "--publish-timeout",
        "30",
        env={"KAFKAWORKER_KAFKA__PRODUCER": '{"linger.ms": 20000}'},
    )
    abandoned = rpc_error(
        stub_for(channel_to(bridge.address)).PlaceOrder, order("o-abandoned"), timeout=0.5
    )
    assert abandoned.code is grpc.StatusCode.DEADLINE_EXCEEDED
    signalled = time.monotonic()
    assert bridge.terminate(30) == 0, bridge.output()
    assert time.monotonic() - signalled < 15  # the flush sent it, not the 20 s linger
    [record] = read_topic(kafka_bootstrap, orders, 1)
    assert orjson.loads(record.value())["order_id"] == "o-abandoned"


def test_the_command_line_client(
    new_topic: TopicFactory, start_bridge: BridgeFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    topic = new_topic(1)
    address = ["--address", start_bridge("--orders-topic", topic).address]
    placed = client.main([*address, "place-order", "--order-id", "o-1", "--customer", "c-1",
                          "--line", "A:2:150"])  # fmt: skip
    assert placed == 0
    answer = orjson.loads(capsys.readouterr().out)
    assert (answer["topic"], answer["partition"], answer["offset"]) == (topic, 0, 0)
    assert client.main([*address, "publish", "missing-topic", "--value", "x"]) == 1
    assert capsys.readouterr().err.startswith("NOT_FOUND: topic 'missing-topic' does not exist")
    assert client.main([*address, "health"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "(server): SERVING",
        f"{SERVICE}: SERVING",
    ]


def test_a_port_in_use_is_one_line_and_exit_2(start_bridge: BridgeFactory) -> None:
    first = start_bridge()
    second = subprocess.run(
        [sys.executable, "-m", "apps.bridge", "--port", str(first.port)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert second.returncode == 2
    assert f"cannot listen on 127.0.0.1:{first.port} (in use?)" in second.stderr


Answers = dict[str, tuple[int, int] | grpc.StatusCode]


def place_through_sigterm(
    bridge: BridgeProcess, callers: int, *, started: int, keep_calling_for: float | None = None
) -> Answers:
    """`callers` place orders in a loop; SIGTERM once `started` are answered. A caller stops
    at its first refusal, or with `keep_calling_for`, calls on until that many seconds after
    the SIGTERM. Each order's (partition, offset), or the status it was refused with."""
    answers: Answers = {}
    stop_at = float("inf")

    async def load() -> None:
        nonlocal stop_at
        async with grpc.aio.insecure_channel(bridge.address) as channel:
            stub = bridge_pb2_grpc.OrderBridgeStub(channel)
            sequence = iter(range(1_000_000))

            async def place_orders() -> None:
                for i in sequence:
                    order_id = f"o-{i}"
                    try:
                        reply = await stub.PlaceOrder(
                            order(order_id, customer=f"c-{i % 7}"), timeout=30
                        )
                        answers[order_id] = (reply.partition, reply.offset)
                    except grpc.aio.AioRpcError as exc:
                        answers[order_id] = exc.code()
                        if keep_calling_for is None:
                            return  # the bridge is stopping: this task is done
                    if time.monotonic() > stop_at:
                        return

            tasks = [asyncio.create_task(place_orders()) for _ in range(callers)]
            while len(answers) < started:  # well under way
                await asyncio.sleep(0.01)
            if keep_calling_for is not None:
                stop_at = time.monotonic() + keep_calling_for
            bridge.process.send_signal(signal.SIGTERM)
            await asyncio.gather(*tasks)

    asyncio.run(load())
    return answers


@pytest.mark.parametrize(
    ("drain", "refusals"),
    [
        ("1", {grpc.StatusCode.UNAVAILABLE}),
        # UNAVAILABLE: the listener was closed, or the connection told to go away.
        # CANCELLED: grpc's own answer to calls that had reached the server but not started
        # when it stopped accepting (most of the 32 callers here); neither was handled.
        ("0", {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}),
    ],
)
def test_sigterm_under_load_loses_no_acknowledged_order_and_writes_no_refused_one(
    *,
    drain: str,
    refusals: set[grpc.StatusCode],
    kafka_bootstrap: str,
    new_topic: TopicFactory,
    start_bridge: BridgeFactory,
) -> None:
    """RPCs keep coming, 32 at a time, when SIGTERM arrives: every order answered OK is on
    the topic where its answer says, and every other one was refused, not written. With a
    drain (the default, 1 s), every refusal is UNAVAILABLE, which clients retry on."""
    orders = new_topic(3)
    bridge = start_bridge("--orders-topic", orders, "--drain", drain)
    answers = place_through_sigterm(bridge, 32, started=300)
    assert bridge.process.wait(30) == 0, bridge.output()
    acknowledged = {k: v for k, v in answers.items() if isinstance(v, tuple)}
    refused = {k: v for k, v in answers.items() if not isinstance(v, tuple)}
    assert len(acknowledged) >= 300
    assert refused, "SIGTERM came while RPCs were still arriving"
    assert set(refused.values()) <= refusals, refused
    written = {
        orjson.loads(r.value())["order_id"]: (r.partition(), r.offset())
        for r in read_topic(kafka_bootstrap, orders, len(acknowledged))
    }
    assert written == acknowledged
    assert len(committed_records(kafka_bootstrap, orders, 3)) == len(acknowledged)


def test_acls_on_a_secured_cluster(
    secured_kafka: Secured, start_bridge: BridgeFactory, channel_to: Any
) -> None:
    """The bridge as user app over SASL_SSL: a topic it may write is published to, one it may
    only describe is PERMISSION_DENIED, one it may not even see is NOT_FOUND (as Kafka
    presents it); and the producer goes on working after a refusal."""
    suffix = uuid.uuid4().hex[:8]
    writable = f"{secured_kafka.app_prefix}bridge-{suffix}"  # app has ALL on its prefix
    readonly, hidden = f"readonly-{suffix}", f"hidden-{suffix}"
    admin = secured_kafka.admin_client()
    for future in admin.create_topics([NewTopic(t, 1, 1) for t in (writable, readonly, hidden)]
                                      ).values():  # fmt: skip
        future.result(timeout=30)
    secured_kafka.allow(secured_kafka.app_user, topics=[readonly], operations=["DESCRIBE"])
    prefix = "KAFKAWORKER_KAFKA__SECURITY__"
    bridge = start_bridge(
        # The principal needs rights on its transactional.id too (app has ALL on its prefix).
        "--transactional-id",
        f"{secured_kafka.app_prefix}bridge-{suffix}",
        bootstrap=secured_kafka.sasl_ssl_bootstrap,
        env={
            f"{prefix}PROTOCOL": "SASL_SSL",
            f"{prefix}SASL__MECHANISM": "SCRAM-SHA-512",
            f"{prefix}SASL__USERNAME": secured_kafka.app_user,
            f"{prefix}SASL__PASSWORD": secured_kafka.app_password,
            f"{prefix}SSL__CA_LOCATION": str(secured_kafka.ca_location),
        },
    )
    stub = stub_for(channel_to(bridge.address))

    def publish(topic: str) -> pb.PublishReply:
        return stub.Publish(pb.PublishRequest(topic=topic, value=b"x"), timeout=30)

    first = publish(writable)
    assert first.topic == writable
    denied = rpc_error(publish, readonly)
    assert denied.code is grpc.StatusCode.PERMISSION_DENIED, denied
    assert rpc_error(publish, hidden).code is grpc.StatusCode.NOT_FOUND
    # A refusal is not the producer's end (offset + 1 is the first transaction's marker).
    assert publish(writable).offset == first.offset + 2


def test_callers_that_keep_calling_through_a_drain(
    kafka_bootstrap: str, new_topic: TopicFactory, start_bridge: BridgeFactory
) -> None:
    """16 callers that call again after each refusal, through the whole drain and past the
    listener's closing. Every refusal during the drain is the bridge's UNAVAILABLE; calls that
    reach grpc as the listener closes may be CANCELLED by grpc itself (issue 32 saw 14-15
    within 5 ms of it), and once it is closed the client's own UNAVAILABLE. Nothing refused
    is written."""
    orders = new_topic(3)
    bridge = start_bridge("--orders-topic", orders, "--drain", "1")
    # The drain, and a second more.
    answers = place_through_sigterm(bridge, 16, started=200, keep_calling_for=1 + 1)
    assert bridge.process.wait(30) == 0, bridge.output()
    codes = Counter(
        grpc.StatusCode.OK if isinstance(answer, tuple) else answer for answer in answers.values()
    )
    refused = {k for k, answer in answers.items() if not isinstance(answer, tuple)}
    assert set(codes) <= {
        grpc.StatusCode.OK,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.CANCELLED,
    }, codes
    # The drain lasted 1 s: most refusals are the bridge's own UNAVAILABLE.
    assert codes[grpc.StatusCode.UNAVAILABLE] > codes[grpc.StatusCode.CANCELLED], codes
    # CANCELLED: at most the one call each caller had in flight as the listener closed.
    assert codes[grpc.StatusCode.CANCELLED] <= 16, codes
    print(f"through a drain: {dict(codes)}")
    written = {
        orjson.loads(r.value())["order_id"] for r in committed_records(kafka_bootstrap, orders, 3)
    }
    assert not written & refused
    assert written == set(answers) - refused

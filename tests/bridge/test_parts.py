"""The bridge's pure parts, without a broker or a server: request validation and the field it
names, the event in both formats, the error-to-status mapping, the topic catalog."""

from __future__ import annotations

import asyncio
import threading

import grpc
import pytest
from confluent_kafka import KafkaError

from apps.bridge.events import (
    CONTENT_TYPE,
    IDEMPOTENCY_KEY,
    Format,
    InvalidFieldError,
    OrderEventCodec,
    OrderPlaced,
    encode,
    field_path,
    order_from_request,
)
from apps.bridge.proto import bridge_pb2 as pb
from apps.bridge.publisher import PublishError, TopicCatalog, check_topic, status_for
from apps.bridge.server import BridgeOptions, bridge_producer_config
from apps.bridge.worker import RecentOrders
from kafkaworker import KafkaWorkerError, Settings


def order(**changes: object) -> pb.PlaceOrderRequest:
    fields: dict[str, object] = {
        "order_id": "o-1",
        "customer_id": "customer-1",
        "currency": "EUR",
        "lines": [pb.OrderLine(sku="A", quantity=2, unit_price_cents=150)],
    }
    fields.update(changes)
    return pb.PlaceOrderRequest(**fields)  # type: ignore[arg-type]


def test_a_valid_request_becomes_the_event() -> None:
    event = order_from_request(
        order(
            lines=[
                pb.OrderLine(sku="A", quantity=2, unit_price_cents=150),
                pb.OrderLine(sku="B", quantity=1, unit_price_cents=5),
            ]
        ),
        placed_at_ms=7,
    )
    assert (event.order_id, event.customer_id, event.total_cents, event.placed_at_ms) == (
        "o-1",
        "customer-1",
        305,
        7,
    )


@pytest.mark.parametrize(
    ("request_", "field", "reason"),
    [
        (order(order_id=""), "order_id", "required"),
        (order(customer_id=""), "customer_id", "required"),
        (order(customer_id="x" * 129), "customer_id", "at most 128"),
        (order(lines=[]), "lines", "required"),
        (order(currency="eur"), "currency", "pattern"),
        (
            order(lines=[pb.OrderLine(sku="A", quantity=1), pb.OrderLine(sku="B", quantity=0)]),
            "lines[1].quantity",
            "greater than or equal to 1",
        ),
        (order(lines=[pb.OrderLine(quantity=1)]), "lines[0].sku", "required"),
        (
            order(lines=[pb.OrderLine(sku="A", quantity=1, unit_price_cents=-1)]),
            "lines[0].unit_price_cents",
            "greater than or equal to 0",
        ),
    ],
)
def test_an_invalid_request_names_its_field(
    request_: pb.PlaceOrderRequest, field: str, reason: str
) -> None:
    with pytest.raises(InvalidFieldError) as raised:
        order_from_request(request_, placed_at_ms=0)
    assert raised.value.field == field
    assert str(raised.value).startswith(f"{field}: ")
    assert reason in str(raised.value)


def test_field_paths() -> None:
    assert field_path(("lines", 3, "sku")) == "lines[3].sku"
    assert field_path(("currency",)) == "currency"


@pytest.mark.parametrize("fmt", list(Format))
def test_the_event_reads_back_in_either_format(fmt: Format) -> None:
    event = order_from_request(order(), placed_at_ms=1_700_000_000_000)
    value, headers = encode(event, fmt)
    assert headers == [(CONTENT_TYPE, fmt.content_type), (IDEMPOTENCY_KEY, b"o-1")]
    decoded = OrderEventCodec().decode(value, headers)
    assert OrderPlaced.model_validate(decoded) == event


def test_the_protobuf_event_is_the_generated_message() -> None:
    event = order_from_request(order(), placed_at_ms=5)
    value, _ = encode(event, Format.PROTOBUF)
    message = pb.OrderPlaced.FromString(value)
    assert (message.order_id, message.total_cents, message.lines[0].sku) == ("o-1", 300, "A")


def test_an_unknown_content_type_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown content-type"):
        OrderEventCodec().decode(b"{}", [(CONTENT_TYPE, b"text/csv")])


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (KafkaError.UNKNOWN_TOPIC_OR_PART, grpc.StatusCode.NOT_FOUND),
        (KafkaError._UNKNOWN_TOPIC, grpc.StatusCode.NOT_FOUND),
        (KafkaError.MSG_SIZE_TOO_LARGE, grpc.StatusCode.INVALID_ARGUMENT),
        (KafkaError.TOPIC_AUTHORIZATION_FAILED, grpc.StatusCode.PERMISSION_DENIED),
        (KafkaError._MSG_TIMED_OUT, grpc.StatusCode.UNAVAILABLE),
        (KafkaError._TRANSPORT, grpc.StatusCode.UNAVAILABLE),
        (KafkaError.NOT_ENOUGH_REPLICAS, grpc.StatusCode.UNAVAILABLE),
    ],
)
def test_what_a_produce_error_becomes(code: int, status: grpc.StatusCode) -> None:
    assert status_for(KafkaError(code)) is status


def test_a_record_not_committed_in_time_is_unavailable() -> None:
    assert status_for(None) is grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("topic", ["", "a b", "x" * 250, "orders/1"])
def test_a_topic_name_kafka_refuses(topic: str) -> None:
    with pytest.raises(PublishError) as raised:
        check_topic(topic)
    assert raised.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert str(raised.value).startswith("topic: ")


class FakeCluster:
    """list_topics for the catalog: counts the requests, and can hold them until released."""

    def __init__(self, *topics: str) -> None:
        self.topics = set(topics)
        self.requests = 0
        self.release = threading.Event()
        self.release.set()

    def __call__(self) -> set[str]:
        self.requests += 1
        assert self.release.wait(10)
        return set(self.topics)


def test_the_catalog_trusts_a_known_topic_for_its_ttl() -> None:
    now = [0.0]
    cluster = FakeCluster("a")
    catalog = TopicCatalog(cluster, ttl=30, clock=lambda: now[0])

    async def scenario() -> None:
        assert await catalog.exists("a")
        assert await catalog.exists("a")
        assert cluster.requests == 1
        now[0] = 31.0
        assert await catalog.exists("a")
        assert cluster.requests == 2

    asyncio.run(scenario())


def test_the_catalog_looks_again_for_an_unknown_topic() -> None:
    cluster = FakeCluster()
    catalog = TopicCatalog(cluster)

    async def scenario() -> None:
        assert not await catalog.exists("new")
        cluster.topics.add("new")  # created meanwhile
        assert await catalog.exists("new")
        catalog.forget("new")
        cluster.topics.clear()  # deleted
        assert not await catalog.exists("new")

    asyncio.run(scenario())


def test_concurrent_lookups_share_one_request() -> None:
    cluster = FakeCluster("a")
    cluster.release.clear()
    catalog = TopicCatalog(cluster)

    async def scenario() -> list[bool]:
        lookups = [asyncio.create_task(catalog.exists(t)) for t in ("a", "b", "a", "c")]
        await asyncio.sleep(0)  # all four asked before the first answer
        await asyncio.to_thread(cluster.release.set)
        return await asyncio.gather(*lookups)

    assert asyncio.run(scenario()) == [True, False, True, False]
    assert cluster.requests == 1


def test_a_failed_lookup_is_shared_and_remembered_briefly() -> None:
    """Six callers during an outage: one look-up, six answers at once (issue 32: they were
    answered one metadata timeout after another); callers within failure_ttl of the failure
    get it without a look-up; after that a caller looks again."""
    now = [0.0]
    requests = 0
    release = threading.Event()

    def down() -> set[str]:
        nonlocal requests
        requests += 1
        assert release.wait(10)
        raise KafkaWorkerError("cannot reach Kafka")

    catalog = TopicCatalog(down, failure_ttl=1.0, clock=lambda: now[0])

    async def scenario() -> list[BaseException | bool]:
        lookups = [asyncio.create_task(catalog.exists(f"t{i}")) for i in range(6)]
        await asyncio.sleep(0)
        await asyncio.to_thread(release.set)
        answers = await asyncio.gather(*lookups, return_exceptions=True)
        now[0] = 0.5
        with pytest.raises(KafkaWorkerError):
            await catalog.exists("t0")
        assert requests == 1
        now[0] = 1.5
        with pytest.raises(KafkaWorkerError):
            await catalog.exists("t0")
        return answers

    answers = asyncio.run(scenario())
    assert all(isinstance(a, KafkaWorkerError) for a in answers), answers
    assert requests == 2


def test_a_caller_that_goes_away_does_not_end_the_shared_lookup() -> None:
    cluster = FakeCluster("a")
    cluster.release.clear()
    catalog = TopicCatalog(cluster)

    async def scenario() -> bool:
        first = asyncio.create_task(catalog.exists("a"))
        second = asyncio.create_task(catalog.exists("a"))
        await asyncio.sleep(0)
        first.cancel()  # its RPC was cancelled
        await asyncio.to_thread(cluster.release.set)
        return await second

    assert asyncio.run(scenario())
    assert cluster.requests == 1


def test_the_bridge_producer_is_transactional_and_bounded_by_the_publish_timeout() -> None:
    """The user's producer settings stay, under the bridge's own: a transactional.id, and
    librdkafka's delivery timeout (the bound for records whose callers went away) within the
    transaction timeout, as librdkafka requires."""
    user = Settings.model_validate(
        {"kafka": {"producer": {"delivery.timeout.ms": 300_000, "compression.type": "zstd"}}}
    )
    config = bridge_producer_config(user, BridgeOptions(publish_timeout=7.5), "bridge-1")
    assert config["transactional.id"] == "bridge-1"
    assert config["delivery.timeout.ms"] == 7500
    assert config["transaction.timeout.ms"] >= config["delivery.timeout.ms"]
    assert config["allow.auto.create.topics"] is False
    assert config["compression.type"] == "zstd"
    assert (config["acks"], config["enable.idempotence"]) == ("all", True)


def test_an_order_is_confirmed_once_per_idempotency_key_and_topic() -> None:
    recent = RecentOrders(size=2)
    assert recent.first_time("orders", b"o-1")
    assert not recent.first_time("orders", b"o-1")
    assert recent.first_time("other", b"o-1")  # another topic, another stream of orders
    assert recent.first_time("orders", b"o-2")
    assert recent.first_time("orders", b"o-3")  # o-1 is the oldest of three: forgotten
    assert recent.first_time("orders", b"o-1")

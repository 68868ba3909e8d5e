"""The example app's tests, written the way a user of kafkaworker would write them: the
`kafkaworker_client` fixture of the kafkaworker pytest plugin, no broker, no mocks."""

from __future__ import annotations

from typing import Any

import pytest

from apps.orders import app as orders
from apps.orders.app import PricingUnavailable, app
from kafkaworker.testing import TestClient


def order(**fields: Any) -> dict[str, Any]:
    return {"id": 1, "customer": "customer-1", "amount": 10.0, **fields}


def test_an_order_is_accepted_with_its_price(kafkaworker_client: Any) -> None:
    client: TestClient = kafkaworker_client(app)
    delivery = client.send("orders", order(), key="customer-1")
    assert delivery.outcome == "finished"
    [accepted] = delivery.records
    assert accepted.topic == "orders.accepted"
    assert accepted.key == b"customer-1"  # the input's key, so the customer's order holds
    assert accepted.json() == {"id": 1, "customer": "customer-1", "total": 12.0}


def test_an_invalid_order_goes_to_the_dlq_at_once_naming_the_field(
    kafkaworker_client: Any,
) -> None:
    client: TestClient = kafkaworker_client(app)
    delivery = client.send("orders", order(amount=-5))
    assert (delivery.outcome, delivery.attempts) == ("dead_lettered", 1)
    [dead] = client.records("orders.dlq")
    assert dead.header("kw.error.type", b"").endswith(b"ValidationError")
    assert b"amount" in (dead.header("kw.error.message") or b"")
    assert client.records("orders.accepted") == []


def test_a_blocked_customer_is_dead_lettered_without_retries(kafkaworker_client: Any) -> None:
    client: TestClient = kafkaworker_client(app)
    delivery = client.send("orders", order(customer="customer-13"))
    assert (delivery.outcome, delivery.attempts) == ("dead_lettered", 1)
    assert delivery.records[0].header("kw.error.type") == b"kafkaworker.errors.DeadLetter"


def test_pricing_outages_are_retried_then_dead_lettered(
    kafkaworker_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []

    def down(o: orders.Order) -> float:
        calls.append(o.id)
        raise PricingUnavailable("pricing timed out")

    monkeypatch.setattr(orders, "price", down)
    client: TestClient = kafkaworker_client(app)
    delivery = client.send("orders", order())
    # retries=3 with up to 10 s of backoff each: virtual time, so this test takes no time.
    assert (delivery.outcome, delivery.attempts, len(calls)) == ("dead_lettered", 4, 4)
    assert all(isinstance(e, PricingUnavailable) for e in delivery.errors)
    assert delivery.records[0].header("kw.attempts") == b"4"


def test_a_pricing_blip_is_retried_and_the_order_accepted(
    kafkaworker_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    answers = iter([PricingUnavailable("blip"), 42.0])

    def flaky(o: orders.Order) -> float:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(orders, "price", flaky)
    client: TestClient = kafkaworker_client(app, settings={"handlers": {"accept_order": {}}})
    delivery = client.send("orders", order())
    assert (delivery.outcome, delivery.attempts) == ("finished", 2)
    assert delivery.records[0].json()["total"] == 42.0

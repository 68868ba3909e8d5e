"""The payments example (apps/payments: the inbox and the outbox together) against a real
broker and a real PostgreSQL: every accepted order charged once, its event published with
its kw.outbox.id, by the relay the worker runs."""

from __future__ import annotations

import importlib
from types import ModuleType

import orjson
import psycopg
import pytest

from tests.conftest import TopicFactory
from tests.support import make_settings, produce, read_topic, running, wait_until

pytestmark = pytest.mark.kafka


@pytest.fixture
def payments(postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.setenv("PAYMENTS_DB", postgres_url)
    import apps.payments.app as module  # noqa: PLC0415 - imported with this test's database

    return importlib.reload(module)


def test_each_accepted_order_is_charged_once_and_its_event_published(
    kafka_bootstrap: str, new_topic: TopicFactory, postgres_url: str, payments: ModuleType
) -> None:
    accepted, events = new_topic(2), new_topic(2)
    payments.EVENTS = events
    orders = [{"id": i, "customer": f"c{i % 3}", "total": 10.0 + i} for i in range(9)]
    produce(
        kafka_bootstrap,
        accepted,
        [orjson.dumps(o) for o in orders],
        keys=[str(o["customer"]).encode() for o in orders],
    )
    settings = make_settings(kafka_bootstrap, handlers={"charge": {"topics": [accepted]}})
    with running(payments.app, settings):
        published = read_topic(kafka_bootstrap, events, 9)
        with psycopg.connect(postgres_url) as db:
            wait_until(
                lambda: db.execute("select count(*) from payments_ledger").fetchone() == (9,),
                10,
                "9 ledger rows",
            )
    assert sorted(r.key() for r in published) == sorted(str(o["customer"]).encode() for o in orders)
    assert all(dict(r.headers())["kw.outbox.id"].isdigit() for r in published)
    by_customer: dict[bytes, list[int]] = {}
    for record in published:
        by_customer.setdefault(record.key(), []).append(orjson.loads(record.value())["order"])
    assert all(ids == sorted(ids) for ids in by_customer.values())

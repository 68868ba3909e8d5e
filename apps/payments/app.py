"""The inbox and the outbox together: `kafkaworker run apps.payments.app:app` (after the
orders example, apps/orders: it charges what that one accepts).

Each accepted order (orders.accepted, keyed by customer) is charged once: the handler writes a
ledger row and adds a `payment` event for payments.events to the outbox, in the transaction
the inbox opened for the message. The inbox makes the charge happen once however often Kafka
delivers the order; the outbox publishes the event if and only if the charge committed (at
least once, in order per customer, with a stable kw.outbox.id); the relay runs in the same
worker (app.outbox). A `make postgres` server on 127.0.0.1:5432 is the default database
(PAYMENTS_DB overrides it).
"""

from __future__ import annotations

import os
from typing import Any

import psycopg

from kafkaworker import App, Message
from kafkaworker.postgres import PostgresInbox, PostgresOutbox

DATABASE = os.environ.get("PAYMENTS_DB", "postgresql://postgres@127.0.0.1:5432/postgres")
EVENTS = "payments.events"

app = App("payments-service")
outbox = app.outbox(PostgresOutbox(DATABASE))


@app.on_startup
def create_ledger() -> None:
    with psycopg.connect(DATABASE) as db:
        db.execute(
            "create table if not exists payments_ledger (order_id bigint, customer text, "
            "amount numeric, charged_at timestamptz default now())"
        )


@app.handler("orders.accepted", inbox=PostgresInbox(DATABASE), ordering="key", concurrency=8)
def charge(msg: Message[dict[str, Any]], db: psycopg.Connection) -> None:
    order = msg.value
    db.execute(
        "insert into payments_ledger (order_id, customer, amount) values (%s, %s, %s)",
        (order["id"], order["customer"], order["total"]),
    )
    event = {"order": order["id"], "customer": order["customer"], "state": "charged"}
    outbox.add(db, EVENTS, event, key=msg.key)

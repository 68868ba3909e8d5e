"""The example service: `kafkaworker run apps.orders.app:app` (what `make run` starts, with
its own names: --settings apps/orders/demo.yaml).

Orders arrive keyed by customer; each is validated into an Order, checked, and accepted: the
acceptance is produced to orders.accepted. A rejected order goes to the DLQ at once; a
failure of the pricing service is retried with backoff, then dead-lettered. Its tests, the
way a user would write them: tests/examples/test_orders_app.py.
"""

from __future__ import annotations

from typing import Any

import structlog
from pydantic import BaseModel, Field

from kafkaworker import App, Backoff, DeadLetter

app = App("orders-service")
log = structlog.get_logger("orders")


class Order(BaseModel):
    id: int
    customer: str
    amount: float = Field(gt=0)


class PricingUnavailable(Exception):  # noqa: N818 - how the pricing client names it
    """The pricing service did not answer (retried)."""


BLOCKED_CUSTOMERS = frozenset({"customer-13"})


def price(order: Order) -> float:
    """The pricing service (here: a rule; in a real service, a call that can fail)."""
    return round(order.amount * 1.2, 2)


@app.handler(
    "orders",
    ordering="key",
    retries=3,
    backoff=Backoff(initial=0.5, max=10),
    retry_on=PricingUnavailable,
    dlq="orders.dlq",
    output="orders.accepted",
)
def accept_order(order: Order) -> dict[str, Any]:
    if order.customer in BLOCKED_CUSTOMERS:
        raise DeadLetter(f"customer {order.customer} is blocked")
    total = price(order)
    # Debug: at the demo's rate a line per order would bury everything else in the log.
    log.debug("order accepted", order=order.id, customer=order.customer, total=total)
    return {"id": order.id, "customer": order.customer, "total": total}

"""The consumer of the bridge's order events: `kafkaworker run apps.bridge.worker:app`.

Events arrive keyed by customer (so one customer's orders in the order they were placed),
as JSON or Protobuf (OrderEventCodec reads either, by the content-type header), each validated
into OrderPlaced. A confirmation is produced to orders.confirmed; an event that does not
decode or validate goes to the DLQ at once. Topics are the handler's settings
(handlers.confirm_order.topics / output), as for any handler.
"""

from __future__ import annotations

from typing import Any

import structlog

from apps.bridge.events import OrderEventCodec, OrderPlaced
from kafkaworker import App, Message

app = App("bridge-orders")
log = structlog.get_logger("bridge.worker")


@app.handler(
    "orders.placed",
    codec=OrderEventCodec(),
    ordering="key",
    dlq="orders.placed.dlq",
    output="orders.confirmed",
)
def confirm_order(msg: Message[OrderPlaced]) -> dict[str, Any]:
    order = msg.value
    log.info("order confirmed", order=order.order_id, customer=order.customer_id)
    return {
        "order_id": order.order_id,
        "customer_id": order.customer_id,
        "total_cents": order.total_cents,
        "currency": order.currency,
        # Where the event was read: the tests match it with the RPC's answer.
        "event": {"topic": msg.topic, "partition": msg.partition, "offset": msg.offset},
    }

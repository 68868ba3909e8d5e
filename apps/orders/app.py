"""The example service: `kafkaworker run apps.orders.app:app` (what `make run` starts)."""

from __future__ import annotations

from typing import Any

import structlog

from kafkaworker import App, Message

app = App("orders-service")
log = structlog.get_logger("orders")


@app.handler("orders", concurrency=8, ordering="key")
def handle_order(msg: Message[dict[str, Any]]) -> None:
    order = msg.value
    log.info(
        "order accepted",
        order=order["id"],
        customer=order["customer"],
        amount=order["amount"],
        partition=msg.partition,
        offset=msg.offset,
    )

"""The consumer of the bridge's order events: `kafkaworker run apps.bridge.worker:app`.

Events arrive keyed by customer (so one customer's orders in the order they were placed),
as JSON or Protobuf (OrderEventCodec reads either, by the content-type header), each validated
into OrderPlaced. A confirmation is produced to orders.confirmed; an event that does not
decode or validate goes to the DLQ at once. Topics are the handler's settings
(handlers.confirm_order.topics / output), as for any handler.

An order is confirmed once per idempotency key (the order_id): a caller told
DEADLINE_EXCEEDED retries with the same order_id, and both events may be on the topic. The
repeat is on the same partition (same customer key) after the first, so this process sees
both while it owns the partition; see RecentOrders for what it does not cover.
"""

from __future__ import annotations

import collections
import threading
from typing import Any

import structlog

from apps.bridge.events import IDEMPOTENCY_KEY, OrderEventCodec, OrderPlaced
from kafkaworker import App, Message

app = App("bridge-orders")
log = structlog.get_logger("bridge.worker")


class RecentOrders:
    """The idempotency keys of the last `size` orders confirmed by this process.

    In memory, so a repeat that arrives after a restart or a rebalance moved the partition
    elsewhere is confirmed again (at-least-once, as a crash between a handler and its commit
    is): a consumer whose effects must happen once keeps these keys with its effects, in one
    database transaction (an inbox table with the key as primary key)."""

    def __init__(self, size: int = 100_000) -> None:
        self._size = size
        self._keys: collections.OrderedDict[tuple[str, bytes], None] = collections.OrderedDict()
        self._lock = threading.Lock()  # handlers of different keys run on different threads

    def first_time(self, topic: str, key: bytes) -> bool:
        """True the first time `key` is seen on `topic` (and remembers it), False for a
        repeat."""
        key_on_topic = (topic, key)
        with self._lock:
            if key_on_topic in self._keys:
                self._keys.move_to_end(key_on_topic)
                return False
            self._keys[key_on_topic] = None
            if len(self._keys) > self._size:
                self._keys.popitem(last=False)
            return True


recent = RecentOrders()


@app.handler(
    "orders.placed",
    codec=OrderEventCodec(),
    ordering="key",
    dlq="orders.placed.dlq",
    output="orders.confirmed",
)
def confirm_order(msg: Message[OrderPlaced]) -> dict[str, Any] | None:
    order = msg.value
    key = msg.header(IDEMPOTENCY_KEY) or order.order_id.encode()  # events of older bridges
    if not recent.first_time(msg.topic, key):
        log.info("order repeated: not confirmed again", order=order.order_id, offset=msg.offset)
        return None
    log.info("order confirmed", order=order.order_id, customer=order.customer_id)
    return {
        "order_id": order.order_id,
        "customer_id": order.customer_id,
        "total_cents": order.total_cents,
        "currency": order.currency,
        # Where the event was read: the tests match it with the RPC's answer.
        "event": {"topic": msg.topic, "partition": msg.partition, "offset": msg.offset},
    }

"""The order event: validated from a PlaceOrder request, written as JSON or Protobuf, read back
by the consumer (apps/bridge/worker.py) into the same model whichever it was written as.

One pydantic model is the contract on both sides: the bridge validates requests with it (a
failing field becomes INVALID_ARGUMENT naming it), the worker's handler is typed with it.
"""

from __future__ import annotations

import enum
from typing import Annotated, Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from apps.bridge.proto import bridge_pb2
from kafkaworker.serialization import Headers

CONTENT_TYPE = "content-type"  # the header that says which format a record was written in
# The header a consumer deduplicates on: PlaceOrder puts the order_id there. A record the
# bridge answered DEADLINE_EXCEEDED may have been written, and its caller's retry (same
# order_id) writes it again: both carry the same key.
IDEMPOTENCY_KEY = "idempotency-key"


class Format(enum.StrEnum):
    JSON = "json"
    PROTOBUF = "protobuf"

    @property
    def content_type(self) -> bytes:
        return b"application/json" if self is Format.JSON else b"application/x-protobuf"


# Bounds that keep a request's record well under the broker's 1 MB message.max.bytes.
Id = Annotated[str, Field(min_length=1, max_length=128)]


class OrderLine(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    sku: Id
    quantity: int = Field(ge=1, le=1_000_000)
    unit_price_cents: int = Field(ge=0)


class OrderPlaced(BaseModel):
    """The event on the orders topic; its key is customer_id."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    order_id: Id
    customer_id: Id
    lines: list[OrderLine] = Field(min_length=1, max_length=1000)
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    total_cents: int = Field(ge=0, le=2**63 - 1)  # an int64 in the Protobuf event
    placed_at_ms: int = Field(ge=0)


class InvalidFieldError(ValueError):
    """A request field failed validation; `field` is its path in the request (lines[1].sku)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field


def field_path(location: tuple[int | str, ...]) -> str:
    """('lines', 1, 'sku') -> 'lines[1].sku': the field as a caller of the RPC names it."""
    path = ""
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else part)
    return path


def order_from_request(request: bridge_pb2.PlaceOrderRequest, placed_at_ms: int) -> OrderPlaced:
    """The event for a PlaceOrder request; InvalidFieldError for its first invalid field."""
    lines = [
        {"sku": line.sku, "quantity": line.quantity, "unit_price_cents": line.unit_price_cents}
        for line in request.lines
    ]
    try:
        return OrderPlaced(
            order_id=request.order_id,
            customer_id=request.customer_id,
            lines=lines,  # type: ignore[arg-type]  # validated into OrderLine by pydantic
            currency=request.currency,
            total_cents=sum(x.quantity * x.unit_price_cents for x in request.lines),
            placed_at_ms=placed_at_ms,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        # proto3 has no "unset" for strings: an empty one is how a missing field arrives.
        reason = "required" if first["input"] in ("", []) else first["msg"]
        raise InvalidFieldError(field_path(first["loc"]), reason) from None


def encode(order: OrderPlaced, fmt: Format) -> tuple[bytes, list[tuple[str, bytes]]]:
    """The record's value and headers for `order` in `fmt`."""
    if fmt is Format.JSON:
        value = orjson.dumps(order.model_dump())
    else:
        value = bridge_pb2.OrderPlaced(
            order_id=order.order_id,
            customer_id=order.customer_id,
            lines=[bridge_pb2.OrderLine(**line.model_dump()) for line in order.lines],
            currency=order.currency,
            total_cents=order.total_cents,
            placed_at_ms=order.placed_at_ms,
        ).SerializeToString(deterministic=True)
    return value, [(CONTENT_TYPE, fmt.content_type), (IDEMPOTENCY_KEY, order.order_id.encode())]


class OrderEventCodec:
    """Decodes an order event by its content-type header (JSON when there is none), so one
    consumer reads what a bridge writes in either format; the handler's model validates it."""

    name = "bridge-order"

    def decode(self, data: bytes, headers: Headers) -> Any:
        content_type = next((v for k, v in headers if k == CONTENT_TYPE), None)
        if content_type == Format.PROTOBUF.content_type:
            event = bridge_pb2.OrderPlaced.FromString(data)
            return {
                "order_id": event.order_id,
                "customer_id": event.customer_id,
                "lines": [
                    {"sku": x.sku, "quantity": x.quantity, "unit_price_cents": x.unit_price_cents}
                    for x in event.lines
                ],
                "currency": event.currency,
                "total_cents": event.total_cents,
                "placed_at_ms": event.placed_at_ms,
            }
        if content_type not in (None, Format.JSON.content_type):
            raise ValueError(f"unknown content-type {content_type!r}")
        return orjson.loads(data)

    def encode(self, value: Any) -> bytes:
        if isinstance(value, OrderPlaced):
            return encode(value, Format.JSON)[0]
        return orjson.dumps(value)

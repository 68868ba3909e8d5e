"""The OrderBridge servicer: requests in, validated records out through the Publisher."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import grpc
import structlog

from apps.bridge.events import Format, InvalidFieldError, encode, order_from_request
from apps.bridge.proto import bridge_pb2, bridge_pb2_grpc
from apps.bridge.publisher import PublishError, Publishes

if TYPE_CHECKING:
    from apps.bridge.tracing import RpcSpans

log = structlog.get_logger("bridge")
Context = grpc.aio.ServicerContext[Any, Any]


class OrderBridgeService(bridge_pb2_grpc.OrderBridgeServicer):
    def __init__(
        self,
        publisher: Publishes,
        *,
        orders_topic: str,
        fmt: Format,
        spans: RpcSpans | None = None,
    ) -> None:
        self._publisher = publisher
        # With tracing on: a span per RPC, the caller's trace going on into the record.
        self._spans = spans
        self._orders_topic = orders_topic
        self._format = fmt
        self.refusing = False  # set by Bridge.stop(): RPCs not started yet are UNAVAILABLE

    async def _refuse_when_stopping(self, context: Context) -> None:
        if self.refusing:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, "the bridge is shutting down: retry elsewhere"
            )

    async def PlaceOrder(  # noqa: N802 - the RPC's name, as the generated base class has it
        self, request: bridge_pb2.PlaceOrderRequest, context: Context
    ) -> bridge_pb2.PublishReply:
        await self._refuse_when_stopping(context)
        try:
            order = order_from_request(request, placed_at_ms=time.time_ns() // 1_000_000)
        except InvalidFieldError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        value, headers = encode(order, self._format)

        # Debug: one line per RPC would bury the rest; the tests wait on it to know an RPC
        # is in flight.
        log.debug("rpc received", rpc="PlaceOrder", order=order.order_id)
        return await self._publish(
            context,
            "PlaceOrder",
            self._orders_topic,
            value,
            key=order.customer_id.encode(),
            headers=headers,
        )

    async def Publish(  # noqa: N802 - the RPC's name
        self, request: bridge_pb2.PublishRequest, context: Context
    ) -> bridge_pb2.PublishReply:
        await self._refuse_when_stopping(context)
        headers: list[tuple[str, bytes | None]] = []
        for i, header in enumerate(request.headers):
            if not header.name:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT, f"headers[{i}].name: required"
                )
            headers.append((header.name, header.value))
        log.debug("rpc received", rpc="Publish", topic=request.topic)
        return await self._publish(
            context,
            "Publish",
            request.topic,
            request.value if request.HasField("value") else None,
            key=request.key if request.HasField("key") else None,
            headers=headers,
        )

    async def _publish(
        self,
        context: Context,
        rpc: str,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None,
        headers: Sequence[tuple[str, bytes | None]],
    ) -> bridge_pb2.PublishReply:
        spans = self._spans
        if spans is None:
            try:
                return await self._publisher.publish(topic, value, key=key, headers=headers)
            except PublishError as exc:
                await context.abort(exc.code, str(exc))
        with spans.server(rpc, context.invocation_metadata()):
            sending, headers = spans.send(topic, key, headers, value)
            try:
                reply = await self._publisher.publish(topic, value, key=key, headers=headers)
            except PublishError as exc:
                spans.sends.failed(sending, exc.code.name, str(exc))
                await context.abort(exc.code, str(exc))
            spans.sends.delivered(sending, reply.partition, reply.offset)
            return reply

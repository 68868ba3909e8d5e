"""The standard gRPC health and reflection services, typed.

grpcio-health-checking and grpcio-reflection ship no type information (no py.typed; typeshed's
types-grpcio covers grpc alone), so their untyped surface is confined to this module.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from grpc_health.v1 import health  # type: ignore[import-untyped]
from grpc_health.v1 import health_pb2 as _health_pb2
from grpc_health.v1 import health_pb2_grpc as _health_pb2_grpc
from grpc_reflection.v1alpha import reflection  # type: ignore[import-untyped]

HEALTH_SERVICE: str = health.SERVICE_NAME
REFLECTION_SERVICE: str = reflection.SERVICE_NAME
OVERALL = ""  # the health service's name for the server as a whole


class Health:
    """The grpc.health.v1.Health service on an asyncio server: SERVING or NOT_SERVING per
    service name, and NOT_SERVING for all of them for good once shutdown has begun."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self._servicer = health.aio.HealthServicer()
        _health_pb2_grpc.add_HealthServicer_to_server(self._servicer, server)

    async def set(self, services: Iterable[str], serving: bool) -> None:
        status = (
            _health_pb2.HealthCheckResponse.SERVING
            if serving
            else _health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in services:
            await self._servicer.set(service, status)

    async def enter_graceful_shutdown(self) -> None:
        await self._servicer.enter_graceful_shutdown()


def check_health(channel: grpc.Channel, service: str = OVERALL, timeout: float = 10.0) -> str:
    """A health Check: SERVING, NOT_SERVING, or SERVICE_UNKNOWN; grpc.RpcError when the
    server does not answer."""
    answer = _health_pb2_grpc.HealthStub(channel).Check(
        _health_pb2.HealthCheckRequest(service=service), timeout=timeout
    )
    return str(_health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))


def enable_reflection(services: Iterable[str], server: grpc.aio.Server) -> None:
    """Lets grpcurl and friends list the services and their messages without the .proto."""
    reflection.enable_server_reflection([*services, REFLECTION_SERVICE], server)

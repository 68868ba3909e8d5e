"""The standard gRPC health and reflection services, typed.

grpcio-health-checking and grpcio-reflection ship no type information (no py.typed; typeshed's
types-grpcio covers grpc alone), so their untyped surface is confined to this module.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health  # type: ignore[import-untyped]
from grpc_health.v1 import health_pb2 as _health_pb2
from grpc_health.v1 import health_pb2_grpc as _health_pb2_grpc
from grpc_reflection.v1alpha import reflection  # type: ignore[import-untyped]
from grpc_reflection.v1alpha import reflection_pb2 as _v1alpha

HEALTH_SERVICE: str = health.SERVICE_NAME
REFLECTION_SERVICE: str = reflection.SERVICE_NAME  # grpc.reflection.v1alpha.ServerReflection
REFLECTION_V1_SERVICE = "grpc.reflection.v1.ServerReflection"
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
    """Lets grpcurl and friends list the services and their messages without the .proto, in
    both versions of the reflection service: v1alpha, which grpcio-reflection serves, and v1,
    which newer clients ask first (grpcurl falls back; others do not)."""
    names = [*services, REFLECTION_SERVICE, REFLECTION_V1_SERVICE]
    servicer = reflection.aio.ReflectionServicer(names)
    # grpcio-reflection 1.85 (the newest) ships only v1alpha. v1 is the same protocol under
    # another package name, its messages field for field the same, so the v1alpha servicer
    # and messages serve it as they are; its descriptor, renamed, lets clients describe it.
    _add_v1_descriptor()
    for name in (REFLECTION_SERVICE, REFLECTION_V1_SERVICE):
        info = grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo,
            request_deserializer=_v1alpha.ServerReflectionRequest.FromString,
            response_serializer=_v1alpha.ServerReflectionResponse.SerializeToString,
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(name, {"ServerReflectionInfo": info}),)
        )


def _add_v1_descriptor() -> None:
    """grpc/reflection/v1/reflection.proto in the default pool (where the servicer looks
    symbols up), made from v1alpha's by renaming its package."""
    pool = descriptor_pool.Default()
    try:
        pool.FindServiceByName(REFLECTION_V1_SERVICE)
        return  # added by an earlier server in this process
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    _v1alpha.DESCRIPTOR.CopyToProto(proto)
    old, new = ".grpc.reflection.v1alpha.", ".grpc.reflection.v1."
    proto.name = "grpc/reflection/v1/reflection.proto"
    proto.package = "grpc.reflection.v1"
    for message in proto.message_type:
        for field in message.field:
            if field.HasField("type_name"):  # setting it on a scalar field is an error
                field.type_name = field.type_name.replace(old, new)
    for service in proto.service:
        for method in service.method:
            method.input_type = method.input_type.replace(old, new)
            method.output_type = method.output_type.replace(old, new)
    pool.AddSerializedFile(proto.SerializeToString())

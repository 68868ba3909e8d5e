"""The bridge's spans (tracing.enabled, as for a worker): the caller's trace goes on through the
bridge into the record it publishes.

Each RPC is a SERVER span, `{service}/{method}` (the RPC conventions' name and rpc.*
attributes), the child of the context the caller sent in its gRPC metadata (W3C
`traceparent`, through the configured propagator). The record's write is a `send {topic}`
PRODUCER span under it, ended when the transaction holding it committed, and its context is
the record's traceparent: the worker that handles the record continues the trace.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from kafkaworker.tracing.spans import Sending, SendSpans, tracer

CLIENT_ID = "kafkaworker-bridge"


class RpcSpans:
    def __init__(self, service: str) -> None:
        self._service = service
        self._tracer = tracer()
        self.sends = SendSpans(client_id=CLIENT_ID)

    @contextlib.contextmanager
    def server(self, method: str, metadata: Iterable[tuple[str, Any]] | None) -> Iterator[None]:
        """The RPC's span, the current one in the block; an exception (an abort included)
        ends it with an error status."""
        carried = propagate.extract({k: v for k, v in metadata or () if isinstance(v, str)})
        span = self._tracer.start_span(
            f"{self._service}/{method}",
            carried,
            SpanKind.SERVER,
            {"rpc.system": "grpc", "rpc.service": self._service, "rpc.method": method},
            record_exception=False,
        )
        token = otel_context.attach(trace.set_span_in_context(span, carried))
        try:
            yield
        except BaseException as exc:
            span.set_status(Status(StatusCode.ERROR, str(exc)[:512]))
            raise
        finally:
            otel_context.detach(token)
            span.end()

    def send(
        self, topic: str, key: bytes | None, headers: Sequence[tuple[str, Any]], value: Any
    ) -> tuple[Sending, list[Any]]:
        """A send span under the current RPC's, and the record's headers carrying it."""
        return self.sends.start(topic, key, headers, tombstone=value is None)

"""The spans this pytest process makes, kept in memory (the SDK's InMemorySpanExporter).

The global TracerProvider can be set once per process: the first test that asks installs an
SDK one (or keeps the SDK one installed already) and adds the in-memory exporter to it; each
test clears it first (`spans()`)."""

from __future__ import annotations

import functools

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

# A producer's sampled context the test records carry: 00-<trace id>-<span id>-01.
PARENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT_SPAN = "b7ad6b7169203331"
TRACEPARENT = f"00-{PARENT_TRACE}-{PARENT_SPAN}-01".encode()


@functools.cache
def _exporter() -> InMemorySpanExporter:
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


def spans() -> InMemorySpanExporter:
    """The exporter, emptied."""
    exporter = _exporter()
    exporter.clear()
    return exporter


def hex_ids(span: ReadableSpan) -> tuple[str, str]:
    context = span.get_span_context()
    assert context is not None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


def parent_id(span: ReadableSpan) -> str | None:
    return format(span.parent.span_id, "016x") if span.parent is not None else None


def traceparent(headers: list[tuple[str, bytes | None]] | None) -> tuple[str, str]:
    """(trace id, span id) of a record's traceparent header."""
    [value] = [v for name, v in headers or () if name == "traceparent"]
    assert value is not None
    _, trace_id, span_id, _ = value.decode().split("-")
    return trace_id, span_id

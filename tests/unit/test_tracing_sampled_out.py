"""The sampled-out fast paths (tracing/carrier.py, tracing/spans.py): a plain traceparent is
read as the W3C propagator reads it, and a message whose producer sampled it out gets the
span the SDK would give it (non-recording, in the producer's trace, a span id of its own)
without the SDK, whose context still reaches the handler's outputs; any other sampler
decides through the SDK as before."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry import baggage, propagate, trace
from opentelemetry import context as otel_context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, Sampler
from opentelemetry.trace import NonRecordingSpan

from kafkaworker import App, Backoff
from kafkaworker.message import Message
from kafkaworker.runtime.source import Partition
from kafkaworker.runtime.source.memory import MemorySource
from kafkaworker.tracing.carrier import GETTER, extract
from kafkaworker.tracing.spans import ProcessSpans, SendSpans
from tests.memory_spans import PARENT_SPAN, PARENT_TRACE, hex_ids, parent_id, traceparent
from tests.memory_spans import spans as memory_spans
from tests.unit.runtime_support import running

UNSAMPLED = f"00-{PARENT_TRACE}-{PARENT_SPAN}-00".encode()
SAMPLED = f"00-{PARENT_TRACE}-{PARENT_SPAN}-01".encode()


def _seen(context: otel_context.Context) -> tuple[Any, ...]:
    span = trace.get_current_span(context).get_span_context()
    return (
        span.trace_id,
        span.span_id,
        span.is_remote,
        int(span.trace_flags),
        span.trace_state.to_header(),
        dict(baggage.get_all(context)),
    )


@pytest.mark.parametrize(
    "headers",
    [
        [],
        [("traceparent", SAMPLED)],
        [("traceparent", UNSAMPLED)],
        [("other", b"x"), ("traceparent", b"00-" + b"0" * 32 + b"-b7ad6b7169203331-01")],
        [("traceparent", b"00-" + PARENT_TRACE.encode() + b"-" + b"0" * 16 + b"-01")],
        [("traceparent", SAMPLED.upper())],
        [("traceparent", b"01-" + SAMPLED[3:] + b"-future")],
        [("traceparent", b"ff-" + SAMPLED[3:])],
        [("traceparent", SAMPLED + b"-x")],
        [("traceparent", b" " + SAMPLED)],
        [("traceparent", SAMPLED.decode())],
        [("traceparent", SAMPLED), ("tracestate", b"vendor=1")],
        [("traceparent", UNSAMPLED), ("baggage", b"tenant=a")],
        [("traceparent", b"garbage"), ("traceparent", SAMPLED)],  # the last one wins
        [("traceparent", SAMPLED), ("traceparent", None)],
    ],
)
def test_the_fast_extract_reads_what_the_propagator_reads(headers: list[Any]) -> None:
    assert _seen(extract(headers)) == _seen(propagate.extract(headers, getter=GETTER))


class _Record:
    def topic(self) -> str:
        return "t"

    def partition(self) -> int:
        return 0

    def key(self) -> bytes:
        return b"k"

    def value(self) -> bytes:
        return b"v"


def _message(context: bytes) -> Message[bytes]:
    msg: Message[bytes] = Message("t", b"v", key=b"k", headers=[("traceparent", context)])
    msg.record = _Record()  # type: ignore[assignment]
    return msg


def _traced(sampler: Sampler) -> tuple[TracerProvider, InMemorySpanExporter]:
    provider = TracerProvider(sampler=sampler)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def _handle(provider: TracerProvider, context: bytes) -> tuple[trace.Span, list[Any]]:
    """A message's process span, and the headers of an output sent in it."""
    spans = ProcessSpans(handler="h", group="g", client_id="c", provider=provider)
    sends = SendSpans(client_id="c", provider=provider)
    processing = spans.start(_message(context))
    try:
        sending, headers = sends.start("o", b"k", [], tombstone=False)
        sends.delivered(sending, 0, 7)
    finally:
        spans.end(processing)
    return processing.span, headers


class _Counted(ParentBased):
    """ParentBased, counting its decisions."""

    decisions = 0

    def should_sample(self, *args: Any, **kwargs: Any) -> Any:
        self.decisions += 1
        return super().should_sample(*args, **kwargs)


def test_a_message_its_producer_sampled_out_gets_the_sdks_span_without_the_sdk() -> None:
    sampler = _Counted(ALWAYS_ON)
    provider, exporter = _traced(sampler)
    span, headers = _handle(provider, UNSAMPLED)
    assert sampler.decisions == 0  # neither the process span nor the send asked the SDK
    context = span.get_span_context()
    assert isinstance(span, NonRecordingSpan) and not context.trace_flags.sampled
    assert format(context.trace_id, "032x") == PARENT_TRACE
    assert format(context.span_id, "016x") != PARENT_SPAN and not context.is_remote
    # The output carries the trace on, sampled out, from a send span of its own.
    trace_id, span_id = traceparent(headers)
    assert trace_id == PARENT_TRACE and span_id not in (PARENT_SPAN, f"{context.span_id:016x}")
    [value] = [v for name, v in headers if name == "traceparent"]
    assert value.endswith(b"-00")
    assert exporter.get_finished_spans() == ()
    # A sampled producer's message is recorded as before, its output too.
    span, headers = _handle(provider, SAMPLED)
    assert span.get_span_context().trace_flags.sampled
    assert [s.name for s in exporter.get_finished_spans()] == ["send o", "process t"]


def test_a_sampler_that_is_not_parent_based_still_decides_through_the_sdk() -> None:
    provider, exporter = _traced(ALWAYS_ON)  # records whatever the producer decided
    span, _ = _handle(provider, UNSAMPLED)
    assert span.get_span_context().trace_flags.sampled
    assert [s.name for s in exporter.get_finished_spans()] == ["send o", "process t"]


def test_a_def_handler_called_inline_runs_each_message_in_one_span_with_its_retries() -> None:
    """Traced, a def handler without outputs is called inline (the executor's fast path);
    a message that fails stays in its span through its retries."""
    exporter = memory_spans()
    app = App("svc")
    current: dict[bytes, str] = {}
    failed: set[bytes] = set()

    @app.handler("t", name="h", codec="raw", retries=1, backoff=Backoff(initial=0.001))
    def handle(msg: Message[bytes]) -> None:
        current[msg.value] = f"{trace.get_current_span().get_span_context().span_id:016x}"
        if msg.value == b"retry" and msg.value not in failed:
            failed.add(msg.value)
            raise ValueError("once")

    source = MemorySource({"t": 1})
    with running(app.handlers["h"], source, tracing={"enabled": True}):
        for value in (b"ok", b"retry", b"ok2"):
            source.broker.append("t", value, headers=[("traceparent", SAMPLED)])
        assert source.wait_for(lambda s: s.committed.get(Partition("t", 0)) == 3, 30)
    processes = {hex_ids(s)[1]: s for s in exporter.get_finished_spans()}
    assert sorted(processes) == sorted(current.values())  # one span a message, current in it
    assert {parent_id(s) for s in processes.values()} == {PARENT_SPAN}
    retried = processes[current[b"retry"]]
    assert [e.name for e in retried.events] == ["exception"]
    assert "error.type" not in (retried.attributes or {})  # it succeeded at its retry

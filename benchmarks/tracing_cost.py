"""S1's handler without a broker, tracing off or on: what tracing costs a message.

The in-memory source, the real poll thread and worker threads, a def handler that decodes its
value (S1's), 8 partitions; records carry no traceparent (S1's producer has no tracing), so
each message's span is a root the sampler decides on; with `--parent unsampled` each record
carries the traceparent of a producer that sampled it out (flags 00, a trace of its own),
the case of sampling at the producer. Modes:

    off       tracing.enabled false (the default): nothing of OpenTelemetry is imported
    on        tracing on, every span sampled (OTEL_TRACES_SAMPLER=always_on)
    ratio     tracing on, OTEL_TRACES_SAMPLER=parentbased_traceidratio, argument 0.1
    noop      tracing on without an SDK (the API's no-op tracer): kafkaworker's own share

Sampled spans go through the SDK's BatchSpanProcessor to an exporter that encodes each batch
as the OTLP/HTTP exporter does (protobuf) and sends it nowhere: the worker's whole cost of a
span but the network's. Prints msg/s and CPU per message by thread; for instruction counts
run it under callgrind (docs/tracing.md, Cost):

    python -m benchmarks.tracing_cost [--mode off|on|ratio|noop] [--messages N] [--work-us US]
        [--parent none|unsampled]
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import time
from collections.abc import Sequence
from typing import Any

import orjson
import structlog

from benchmarks.async_path import PARTITIONS, drain
from kafkaworker import App, Message, Settings
from kafkaworker.runtime.source.memory import MemorySource

SAMPLERS = {"on": ("always_on", ""), "ratio": ("parentbased_traceidratio", "0.1")}


def _install_sdk(mode: str) -> None:
    """The SDK as `kafkaworker run` sets it up, with the encode-only exporter."""
    from opentelemetry import trace  # noqa: PLC0415 - tracing modes only
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import (  # noqa: PLC0415
        encode_spans,
    )
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import (  # noqa: PLC0415
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    class EncodeOnly(SpanExporter):
        def __init__(self) -> None:
            self.exported = 0

        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            encode_spans(spans).SerializeToString()
            self.exported += len(spans)
            return SpanExportResult.SUCCESS

    sampler, argument = SAMPLERS[mode]
    os.environ["OTEL_TRACES_SAMPLER"] = sampler
    os.environ["OTEL_TRACES_SAMPLER_ARG"] = argument
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(EncodeOnly()))
    trace.set_tracer_provider(provider)


def run(messages: int, mode: str, work_us: float = 0.0, parent: str = "none") -> dict[str, Any]:
    if mode in SAMPLERS:
        _install_sdk(mode)
    app = App("tracing-cost")
    work = work_us / 1e6

    @app.handler("t", name="h")
    def handle(msg: Message[Any]) -> None:
        msg.value  # noqa: B018 - decoded, as S1's handler does
        if work:
            # CPU-bound work holding the GIL: the case where tracing's own CPU shows most
            # (an I/O-bound handler hides it in its waits).
            deadline = time.perf_counter() + work
            while time.perf_counter() < deadline:
                pass

    source = MemorySource({"t": PARTITIONS})
    for i in range(messages):
        value = orjson.dumps({"id": i, "ts": 0.0, "customer": f"c-{i % 1000}", "pad": "x" * 40})
        headers = None
        if parent == "unsampled":
            context = f"00-{random.getrandbits(128):032x}-{random.getrandbits(64) | 1:016x}-00"
            headers = [("traceparent", context.encode())]
        source.broker.append("t", value, partition=i % PARTITIONS, headers=headers)
    # Off leaves the tracing settings out: the same run on a tree without them (kafkaworker
    # before tracing) is the baseline of the instruction counts.
    traced = {"tracing": {"enabled": True}} if mode != "off" else {}
    settings = Settings.model_validate({"log_level": "WARNING", **traced})
    return drain(app, source, settings, messages)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--mode", choices=["off", "on", "ratio", "noop"], default="off")
    parser.add_argument(
        "--work-us", type=float, default=0.0, help="CPU microseconds the handler spends per message"
    )
    parser.add_argument(
        "--parent",
        choices=["none", "unsampled"],
        default="none",
        help="what context the records carry: none, or a producer's that sampled them out",
    )
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    result = run(args.messages, args.mode, args.work_us, args.parent)
    print(
        f"{args.mode} (parent {args.parent}): {result['msgs_per_s']:,.0f} msg/s; "
        f"CPU us per message by thread: {result['cpu_us_per_message']}"
    )


if __name__ == "__main__":
    main()

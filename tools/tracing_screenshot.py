"""docs/tracing.png: one trace in Jaeger's UI, from a gRPC client through the bridge, a worker
and its output to the next worker, taken with Debian's Chromium through Playwright.

    python -m tools.tracing_screenshot --ui DIR [--out docs/tracing.png]

Everything is real and local: a broker (kafkaworker.testing.broker), Jaeger v2 (tools/jaeger.py
builds it), `python -m apps.bridge` and two `kafkaworker run tests.apps.traced:app` workers,
tracing on. The Go module of Jaeger embeds no UI, so `--ui` names a built jaeger-ui (its
`packages/jaeger-ui/build`, v1.75.0 for Jaeger v1.75.0: `npm ci` and `npm run build` in its
source, which is on GitHub, not on a package registry): that is why this is a tool run by hand
when the page should change, not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import orjson
from confluent_kafka.admin import AdminClient, NewTopic
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from apps.bridge.proto import bridge_pb2, bridge_pb2_grpc
from kafkaworker.testing.broker import Cluster
from kafkaworker.testing.jaeger import Jaeger, Span, named
from kafkaworker.testing.jvm import free_port
from kafkaworker.tracing.carrier import inject
from tools.install_chromium import chromium_path
from tools.jaeger import binary

ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def _process(command: list[str], env: dict[str, str], log: Path) -> Iterator[None]:
    with open(log, "wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=out)
    try:
        yield
    finally:
        process.terminate()
        process.wait(60)


def _ready(admin: AdminClient, topics: list[str]) -> None:
    """Topics just created, in the broker's metadata (the bridge looks them up there)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = admin.list_topics(timeout=5).topics
        if all(t in found and found[t].error is None for t in topics):
            return
        time.sleep(0.1)
    raise SystemExit(f"topics {topics} not in the metadata after 30 s")


def _call(bridge: str, topic: str, jaeger: Jaeger) -> str:
    """A traced gRPC client's Publish call, retried until the bridge listens; its trace id."""
    provider = TracerProvider(resource=Resource.create({"service.name": "checkout-client"}))
    provider.add_span_processor(
        SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"{jaeger.otlp_endpoint}/v1/traces"))
    )
    with grpc.insecure_channel(bridge) as channel:
        grpc.channel_ready_future(channel).result(timeout=60)
        stub = bridge_pb2_grpc.OrderBridgeStub(channel)
        # An untraced first call: the bridge's first transaction sets its producer up.
        request = bridge_pb2.PublishRequest(topic=topic, value=orjson.dumps({"id": 41}))
        stub.Publish(request, timeout=30)
        span = provider.get_tracer("checkout").start_span(
            "OrderBridge/Publish", kind=trace.SpanKind.CLIENT
        )
        metadata = tuple((k, v.decode()) for k, v in inject([], trace.set_span_in_context(span)))
        request = bridge_pb2.PublishRequest(topic=topic, value=orjson.dumps({"id": 42}))
        stub.Publish(request, metadata=metadata, timeout=30)
        span.end()
    provider.shutdown()
    return format(span.get_span_context().trace_id, "032x")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ui", type=Path, required=True, help="a built jaeger-ui directory")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "tracing.png")
    args = parser.parse_args()
    jaeger_binary, chromium = binary(), chromium_path()
    if jaeger_binary is None or chromium is None:
        raise SystemExit(
            "needs Jaeger (python -m tools.jaeger) and Chromium (python -m tools.install_chromium)"
        )
    from playwright.sync_api import sync_playwright  # noqa: PLC0415 - a dev dependency

    cluster = Cluster(1)
    cluster.start()
    try:
        with tempfile.TemporaryDirectory(prefix="tracing-shot-") as work:
            workdir = Path(work)
            jaeger = Jaeger(jaeger_binary, workdir, ui_assets=args.ui.resolve()).start()
            try:
                admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
                orders, shipments = "orders.placed", "orders.shipped"
                for future in admin.create_topics(
                    [NewTopic(t, 3, 1) for t in (orders, shipments)]
                ).values():
                    future.result(30)
                _ready(admin, [orders, shipments])
                env = {
                    **os.environ,
                    "KAFKAWORKER_KAFKA__BOOTSTRAP_SERVERS": cluster.bootstrap,
                    "KAFKAWORKER_TRACING__ENABLED": "true",
                    "OTEL_EXPORTER_OTLP_ENDPOINT": jaeger.otlp_endpoint,
                    "OTEL_BSP_SCHEDULE_DELAY": "50",
                    "TRACED_ORDERS": orders,
                    "TRACED_SHIPMENTS": shipments,
                }
                run = [sys.executable, "-m", "kafkaworker", "run", "tests.apps.traced:app"]
                port = free_port()
                with contextlib.ExitStack() as stack:
                    for handler, service in (
                        ("orders", "orders-worker"),
                        ("shipments", "shipping-worker"),
                    ):
                        stack.enter_context(
                            _process(
                                [*run, "--only", handler],
                                {**env, "OTEL_SERVICE_NAME": service},
                                workdir / f"{service}.log",
                            )
                        )
                    stack.enter_context(
                        _process(
                            [sys.executable, "-m", "apps.bridge", "--port", str(port)],
                            {**env, "OTEL_SERVICE_NAME": "order-bridge"},
                            workdir / "bridge.log",
                        )
                    )
                    trace_id = _call(f"127.0.0.1:{port}", orders, jaeger)

                    def complete(spans: list[Span]) -> bool:
                        return named(spans, f"process {shipments}") is not None

                    jaeger.wait_spans(trace_id, complete, "the whole trace", timeout=120)
                with sync_playwright() as playwright:
                    browser = playwright.chromium.launch(executable_path=chromium)
                    page = browser.new_page(viewport={"width": 1400, "height": 900})
                    page.goto(f"{jaeger.query_url}/trace/{trace_id}")
                    page.get_by_text(f"process {shipments}").first.wait_for(timeout=30_000)
                    # The worker's span opened: its attributes, the conventions'.
                    page.get_by_text(f"process {orders}").first.click()
                    page.get_by_text("Tags:").first.click()  # as a table
                    page.get_by_text("messaging.destination.name").first.wait_for()
                    page.wait_for_timeout(500)  # the timeline's bars finish drawing
                    page.screenshot(path=str(args.out), full_page=True)
                    browser.close()
                print(f"{args.out}: trace {trace_id}")
            finally:
                jaeger.stop()
    finally:
        cluster.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())

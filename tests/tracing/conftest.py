"""What the tracing tests share: a real Jaeger v2 (tools/jaeger.py builds it once from the Go
module proxy into the cache; `make test` does that first), started for the session on free
ports; a tracer of the test's own that plays the records' producer (its spans go to the same
Jaeger, as the service "test-producer"); and real `kafkaworker run` processes of
tests/apps/traced.py. Without the binary (no Go toolchain) the tests skip saying how; with CI
set that is a failure."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer
from opentelemetry import baggage as otel_baggage
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from kafkaworker.testing.jaeger import Jaeger
from kafkaworker.tracing.carrier import inject
from tests.conftest import TopicFactory
from tests.support import ROOT, unavailable
from tools.jaeger import HOW, binary

LOG_DIR = ROOT / "build" / "test-logs" / "tracing"


@pytest.fixture(scope="session")
def jaeger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Jaeger]:
    found = binary()
    if found is None:
        unavailable("Jaeger (built by python -m tools.jaeger)", HOW)
    server = Jaeger(found, tmp_path_factory.mktemp("jaeger")).start()
    try:
        yield server
    finally:
        server.stop()


class TracedProducer:
    """The records' producer: a span of its own per record, its context in the headers."""

    def __init__(self, jaeger: Jaeger, bootstrap: str) -> None:
        self.provider = TracerProvider(resource=Resource.create({"service.name": "test-producer"}))
        exporter = OTLPSpanExporter(endpoint=f"{jaeger.otlp_endpoint}/v1/traces")
        self.provider.add_span_processor(SimpleSpanProcessor(exporter))
        self.tracer = self.provider.get_tracer("tests")
        self.producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})

    def send(
        self,
        topic: str,
        value: bytes,
        key: bytes | None = None,
        *,
        baggage: dict[str, str] | None = None,
    ) -> tuple[str, str]:
        """Produce a record in a `send {topic}` span (with `baggage` in its context too); its
        (trace id, span id)."""
        span = self.tracer.start_span(f"send {topic}", kind=trace.SpanKind.PRODUCER)
        try:
            context = trace.set_span_in_context(span)
            for name, value_ in (baggage or {}).items():
                context = otel_baggage.set_baggage(name, value_, context)
            headers = inject([], context)
            self.producer.produce(topic, value, key=key, headers=headers)
            assert self.producer.flush(30) == 0
        finally:
            span.end()
        context = span.get_span_context()
        return format(context.trace_id, "032x"), format(context.span_id, "016x")

    def close(self) -> None:
        self.provider.shutdown()


@pytest.fixture
def traced_producer(jaeger: Jaeger, kafka_bootstrap: str) -> Iterator[TracedProducer]:
    producer = TracedProducer(jaeger, kafka_bootstrap)
    try:
        yield producer
    finally:
        producer.close()


class Workers:
    """`kafkaworker run tests.apps.traced:app --only HANDLER` processes, stopped with SIGTERM
    at the end (each must exit 0); their output is kept in `log_dir`."""

    def __init__(self, jaeger: Jaeger, bootstrap: str, log_dir: Path, topics: dict[str, str]):
        self.env = {
            **os.environ,
            "KAFKAWORKER_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
            "KAFKAWORKER_TRACING__ENABLED": "true",
            "KAFKAWORKER_COMMIT_INTERVAL": "0.2",
            "KAFKAWORKER_STARTUP_TIMEOUT": "60",
            "KAFKAWORKER_LOG_FORMAT": "json",
            "OTEL_EXPORTER_OTLP_ENDPOINT": jaeger.otlp_endpoint,
            # Spans reach Jaeger within 50 ms rather than the SDK's 5 s.
            "OTEL_BSP_SCHEDULE_DELAY": "50",
            **{f"TRACED_{name.upper()}": topic for name, topic in topics.items()},
        }
        self.log_dir = log_dir
        self.processes: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(
        self, handler: str, service: str, *args: str, prefix: Sequence[str] = (), **env: str
    ) -> subprocess.Popen[bytes]:
        """`kafkaworker run` of one handler as the service `service` (OTEL_SERVICE_NAME);
        `prefix`: what runs it (opentelemetry-instrument), else this Python."""
        log = self.log_dir / f"{service}.{len(self.processes)}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [
                    *(prefix or (sys.executable, "-m")),
                    *("kafkaworker", "run", "tests.apps.traced:app"),
                    *("--only", handler, *args),
                ],
                cwd=ROOT,
                env={**self.env, "OTEL_SERVICE_NAME": service, **env},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.processes.append((process, log))
        return process

    def lines(self, service: str) -> list[dict[str, Any]]:
        """The JSON log lines of the service's processes so far."""
        found = []
        for log in sorted(self.log_dir.glob(f"{service}.*.log")):
            for line in log.read_bytes().splitlines():
                with contextlib.suppress(orjson.JSONDecodeError):
                    parsed = orjson.loads(line)
                    if isinstance(parsed, dict):
                        found.append(parsed)
        return found

    def stop(self) -> list[int]:
        for process, _ in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        codes = []
        for process, _ in self.processes:
            try:
                codes.append(process.wait(60))
            except subprocess.TimeoutExpired:
                process.kill()
                codes.append(process.wait())
        return codes


@pytest.fixture
def traced_workers(
    jaeger: Jaeger, kafka_bootstrap: str, tmp_path: Path
) -> Iterator[Callable[[dict[str, str]], Workers]]:
    made: list[Workers] = []

    def make(topics: dict[str, str]) -> Workers:
        workers = Workers(jaeger, kafka_bootstrap, tmp_path, topics)
        made.append(workers)
        return workers

    yield make
    for workers in made:
        codes = workers.stop()
        assert codes == [0] * len(codes), [
            (code, log.read_text()[-3000:])
            for code, (_, log) in zip(codes, workers.processes, strict=True)
        ]


def sorted_by_name(spans: Sequence[Any]) -> dict[str, Any]:
    return {span.name: span for span in spans}


@dataclass
class Traced:
    """What a tracing test works with: the Jaeger, the records' producer, workers, topics."""

    jaeger: Jaeger
    producer: TracedProducer
    workers: Callable[[dict[str, str]], Workers]
    topic: TopicFactory


@pytest.fixture
def traced(
    jaeger: Jaeger,
    traced_producer: TracedProducer,
    traced_workers: Callable[[dict[str, str]], Workers],
    new_topic: TopicFactory,
) -> Traced:
    return Traced(jaeger, traced_producer, traced_workers, new_topic)

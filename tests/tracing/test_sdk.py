"""Whose SDK a worker uses, checked in a real Jaeger: its own, set up from the OTEL_*
variables, unless the app installed a TracerProvider (which wins), or `opentelemetry-instrument`
runs it (whose SDK wins)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import orjson
import pytest

from kafkaworker.testing.jaeger import Span, named
from tests.tracing.conftest import Traced

pytestmark = pytest.mark.kafka


def _processed(traced: Traced, topic: str, **start: object) -> Span:
    """The process span of a record sent to `topic` once the `shipments` worker ran it."""
    workers = traced.workers({"shipments": topic})
    workers.start("shipments", "env-named-worker", **start)  # type: ignore[arg-type]
    trace_id, sent_id = traced.producer.send(topic, orjson.dumps({"id": 1}))
    spans = traced.jaeger.wait_spans(
        trace_id, lambda s: named(s, f"process {topic}") is not None, "the process span"
    )
    process = named(spans, f"process {topic}")
    assert process is not None and process.parent == sent_id
    return process


def test_the_sdk_is_set_up_from_the_otel_variables(traced: Traced) -> None:
    process = _processed(traced, traced.topic(prefix="shipments"))
    assert process.service == "env-named-worker"  # OTEL_SERVICE_NAME
    assert "process.pid" in process.resource  # kafkaworker's resource


def test_a_tracer_provider_the_app_installed_wins(traced: Traced) -> None:
    process = _processed(traced, traced.topic(prefix="shipments"), TRACED_OWN_PROVIDER="1")
    assert process.service == "own-provider"
    assert "process.pid" not in process.resource


def test_opentelemetry_instrument_runs_a_worker(traced: Traced) -> None:
    scripts = Path(sys.executable).parent  # opentelemetry-instrument and kafkaworker
    process = _processed(
        traced,
        traced.topic(prefix="shipments"),
        prefix=(str(scripts / "opentelemetry-instrument"),),
        PATH=f"{scripts}{os.pathsep}{os.environ.get('PATH', '')}",
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
    )
    assert process.service == "env-named-worker"
    # The distro's resource, not kafkaworker's: its SDK was the one installed.
    assert "telemetry.auto.version" in process.resource
    assert "process.pid" not in process.resource

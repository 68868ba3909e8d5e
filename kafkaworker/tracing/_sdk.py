"""The OpenTelemetry SDK of a worker process, set up from the standard OTEL_* variables.

`kafkaworker run` with tracing.enabled sets up a TracerProvider (and, with tracing.metrics, a
MeterProvider) before anything of the app starts, unless one is installed already: the app's
own (set when its module is imported) or `opentelemetry-instrument`'s; that one then wins and
is only flushed. What the SDK reads
itself it reads (OTEL_TRACES_SAMPLER and its argument, OTEL_BSP_*, OTEL_EXPORTER_OTLP_*
endpoints, headers and timeouts, OTEL_RESOURCE_ATTRIBUTES, OTEL_PROPAGATORS); what is left
to a distro is done here: the exporter (OTEL_TRACES_EXPORTER, OTEL_METRICS_EXPORTER: otlp,
console or none) and its protocol (OTEL_EXPORTER_OTLP_PROTOCOL: http/protobuf, the
default, or grpc when its exporter is installed), and the service name (OTEL_SERVICE_NAME,
else the app's name).

One provider per process: OpenTelemetry's globals are set once, so a second run in the same
process (tests, an embedding program) finds the first one's provider and uses it. Each run
flushes what it traced when it stops; the SDK shuts the provider down at exit.
"""

from __future__ import annotations

import importlib
import os
import socket
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

from kafkaworker.errors import StartupError

# How long a run's stop waits for its spans to reach the collector.
FLUSH_TIMEOUT = 10.0
_GRPC = "opentelemetry-exporter-otlp-proto-grpc"


class TracingSdk:
    """What a run set up, and its flush: a context manager entered before the app starts and
    left after its last handler stopped and its producer flushed."""

    def __init__(self, service_name: str, *, metrics: bool = False) -> None:
        self.service_name = service_name
        self.metrics = metrics
        self.tracer_provider: Any = None
        self.meter_provider: Any = None
        self.installed = False  # the tracer provider is kafkaworker's (else the app's own)

    def __enter__(self) -> TracingSdk:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.flush()

    def start(self) -> None:
        if _truthy(os.environ.get("OTEL_SDK_DISABLED")):
            return  # the API's no-op providers stay: spans cost next to nothing
        current = trace.get_tracer_provider()
        if isinstance(current, trace.ProxyTracerProvider):
            current = _tracer_provider(self._resource())
            trace.set_tracer_provider(current)
            self.installed = True
        self.tracer_provider = current
        if self.metrics:
            meter_provider = metrics.get_meter_provider()
            if isinstance(
                meter_provider, metrics._internal._ProxyMeterProvider
            ):  # the API exports no name for it
                meter_provider = _meter_provider(self._resource())
                metrics.set_meter_provider(meter_provider)
            self.meter_provider = meter_provider

    def flush(self, timeout: float = FLUSH_TIMEOUT) -> None:
        """Send what was traced (and measured) so far: the spans of the last messages before
        a shutdown would otherwise wait for the batch processor's next round, which the exit
        of the process may cut short."""
        millis = int(timeout * 1000)
        for provider in (self.tracer_provider, self.meter_provider):
            flush = getattr(provider, "force_flush", None)
            if flush is not None:
                flush(millis)

    def _resource(self) -> Resource:
        attributes: dict[str, Any] = {"process.pid": os.getpid(), "host.name": socket.gethostname()}
        named = os.environ.get("OTEL_SERVICE_NAME") or "service.name=" in os.environ.get(
            "OTEL_RESOURCE_ATTRIBUTES", ""
        )
        if not named:
            attributes["service.name"] = self.service_name
        return Resource.create(attributes)


def _tracer_provider(resource: Resource) -> TracerProvider:
    provider = TracerProvider(resource=resource)  # its sampler: OTEL_TRACES_SAMPLER
    for exporter in _exporters("OTEL_TRACES_EXPORTER", "TRACES"):
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def _meter_provider(resource: Resource) -> Any:
    from opentelemetry.sdk.metrics import MeterProvider  # noqa: PLC0415 - tracing.metrics only
    from opentelemetry.sdk.metrics.export import (  # noqa: PLC0415
        ConsoleMetricExporter,
        PeriodicExportingMetricReader,
    )

    readers = []
    for name in _names("OTEL_METRICS_EXPORTER"):
        if name == "console":
            readers.append(PeriodicExportingMetricReader(ConsoleMetricExporter()))
        elif name == "otlp":
            exporter = _otlp("METRICS", "metric_exporter", "OTLPMetricExporter")
            readers.append(PeriodicExportingMetricReader(exporter))
        else:
            raise _unknown("OTEL_METRICS_EXPORTER", name)
    return MeterProvider(resource=resource, metric_readers=readers)


def _exporters(variable: str, signal: str) -> list[SpanExporter]:
    exporters: list[SpanExporter] = []
    for name in _names(variable):
        if name == "console":
            exporters.append(ConsoleSpanExporter())
        elif name == "otlp":
            exporters.append(_otlp(signal, "trace_exporter", "OTLPSpanExporter"))
        else:
            raise _unknown(variable, name)
    return exporters


def _names(variable: str) -> list[str]:
    """The exporters a variable names (otlp by default; none: no exporter)."""
    names = [n.strip().lower() for n in os.environ.get(variable, "otlp").split(",") if n.strip()]
    return [n for n in names if n != "none"]


def _otlp(signal: str, module: str, cls: str) -> Any:
    """The OTLP exporter of OTEL_EXPORTER_OTLP_{signal}_PROTOCOL (else
    OTEL_EXPORTER_OTLP_PROTOCOL, else http/protobuf: the specification's default)."""
    protocol = (
        os.environ.get(f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL")
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    if protocol == "http/protobuf":
        package = "opentelemetry.exporter.otlp.proto.http"
    elif protocol == "grpc":
        package = "opentelemetry.exporter.otlp.proto.grpc"
    else:
        raise StartupError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: kafkaworker exports http/protobuf, or "
            f"grpc with {_GRPC} installed"
        )
    try:
        exporter = getattr(importlib.import_module(f"{package}.{module}"), cls)
    except ModuleNotFoundError:
        raise StartupError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL=grpc needs pip install {_GRPC} (or use http/protobuf)"
        ) from None
    return exporter()


def _unknown(variable: str, name: str) -> StartupError:
    return StartupError(f"{variable}={name!r}: kafkaworker sets up otlp, console or none")


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() == "true"

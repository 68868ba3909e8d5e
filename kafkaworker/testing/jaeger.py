"""A real Jaeger v2 (all-in-one, in-memory storage) on free ports: for this project's tracing
tests (tests/tracing), the tracing benchmark rows and the docs' screenshot.

The binary is the one tools/jaeger.py builds from the Go module proxy (the Go module embeds
no UI: `ui_assets` points the query service at a built jaeger-ui, for the screenshot). Its
ports are fixed unless a config file says otherwise, so each start writes one: the OTLP/HTTP
receiver (traces and metrics), the query service (HTTP API and UI; gRPC), and a Prometheus
exporter that the metrics pipeline writes to, so that the OpenTelemetry metrics a worker
sends can be read back too. Traces are read through the query API: GET /api/traces/{id}.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kafkaworker.testing.jvm import free_port, spawn, stop_group

_CONFIG = """\
service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
    metrics:
      receivers: [otlp]
      exporters: [prometheus]
  telemetry:
    metrics:
      level: none
    logs:
      level: warn
extensions:
  jaeger_query:
    storage:
      traces: memstore
    http:
      endpoint: 127.0.0.1:{query}
    grpc:
      endpoint: 127.0.0.1:{query_grpc}
{ui}  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: 100000
receivers:
  otlp:
    protocols:
      http:
        endpoint: 127.0.0.1:{otlp}
processors:
  batch:
    timeout: 50ms
exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
  prometheus:
    endpoint: 127.0.0.1:{prometheus}
"""


@dataclass
class Span:
    """A span as Jaeger's API returns it, with its service and tags as a dict."""

    trace_id: str
    span_id: str
    name: str
    service: str
    tags: dict[str, Any]
    parent: str | None  # the span id of its CHILD_OF reference
    links: list[tuple[str, str]]  # (trace id, span id) of its FOLLOWS_FROM references
    events: list[dict[str, Any]]
    resource: dict[str, Any]  # its process's tags: process.pid, service.instance.id...

    @property
    def kind(self) -> str | None:
        return self.tags.get("span.kind")


def named(spans: list[Span], name: str, service: str | None = None) -> Span | None:
    """The span called `name` (of `service`, when given), if the trace has one."""
    return next((s for s in spans if s.name == name and service in (None, s.service)), None)


class Jaeger:
    def __init__(self, binary: Path, workdir: Path, *, ui_assets: Path | None = None) -> None:
        self.binary = binary
        self.workdir = workdir
        self.ui_assets = ui_assets
        self.log = workdir / "jaeger.log"
        self.ports = {name: free_port() for name in ("otlp", "query", "query_grpc", "prometheus")}
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def otlp_endpoint(self) -> str:
        """OTEL_EXPORTER_OTLP_ENDPOINT for a worker (the exporter adds /v1/traces)."""
        return f"http://127.0.0.1:{self.ports['otlp']}"

    @property
    def query_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['query']}"

    def start(self, timeout: float = 30.0) -> Jaeger:
        config = self.workdir / "jaeger.yaml"
        ui = f"    ui:\n      assets_path: {self.ui_assets}\n" if self.ui_assets else ""
        config.write_text(_CONFIG.format(ui=ui, **self.ports))
        self.process = spawn([str(self.binary), "--config", f"file:{config}"], self.log)
        deadline = time.monotonic() + timeout
        while self._get("/api/services") is None:
            if self.process.poll() is not None:
                raise RuntimeError(f"jaeger exited: {self.log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"jaeger did not answer in {timeout}s: {self.log}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        stop_group(self.process, timeout=10, kill=False)

    def _get(self, path: str, base: str | None = None) -> Any:
        try:
            with urllib.request.urlopen((base or self.query_url) + path, timeout=5) as answer:
                body = answer.read()
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise
        except (urllib.error.URLError, ConnectionError):
            return None
        return json.loads(body) if body[:1] in (b"{", b"[") else body.decode()

    def spans(self, trace_id: str) -> list[Span]:
        """The spans of a trace stored so far (none when Jaeger has not got it)."""
        found = self._get(f"/api/traces/{trace_id}")
        if not found or not found.get("data"):
            return []
        spans: list[Span] = []
        for trace in found["data"]:
            services = {k: p["serviceName"] for k, p in trace["processes"].items()}
            resources = {
                k: {t["key"]: t["value"] for t in p.get("tags") or []}
                for k, p in trace["processes"].items()
            }
            for span in trace["spans"]:
                references = span.get("references") or []
                parent = next((r["spanID"] for r in references if r["refType"] == "CHILD_OF"), None)
                links = [
                    (r["traceID"], r["spanID"])
                    for r in references
                    if r["refType"] == "FOLLOWS_FROM"
                ]
                spans.append(
                    Span(
                        trace_id=span["traceID"],
                        span_id=span["spanID"],
                        name=span["operationName"],
                        service=services[span["processID"]],
                        tags={t["key"]: t["value"] for t in span.get("tags") or []},
                        parent=parent,
                        links=links,
                        events=[
                            {f["key"]: f["value"] for f in log["fields"]}
                            for log in span.get("logs") or []
                        ],
                        resource=resources[span["processID"]],
                    )
                )
        return spans

    def wait_spans(
        self,
        trace_id: str,
        until: Callable[[list[Span]], bool],
        what: str,
        timeout: float = 60.0,
    ) -> list[Span]:
        """The trace's spans once `until(spans)` holds; fails naming `what` after `timeout`
        with what was there."""
        deadline = time.monotonic() + timeout
        while True:
            spans = self.spans(trace_id)
            if until(spans):
                return spans
            if time.monotonic() > deadline:
                shown = [(s.service, s.name, s.span_id, s.parent) for s in spans]
                raise AssertionError(f"timed out waiting for {what} in trace {trace_id}: {shown}")
            time.sleep(0.1)

    def metrics(self) -> str:
        """The Prometheus exporter's page: the OpenTelemetry metrics Jaeger received."""
        found = self._get("/metrics", f"http://127.0.0.1:{self.ports['prometheus']}")
        return found if isinstance(found, str) else ""

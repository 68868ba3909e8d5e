"""Tracing with OpenTelemetry (docs/tracing.md): one trace from a record's producer through
every worker, retry and dead letter.

This module imports nothing of OpenTelemetry, so that the core runs without the `otel` extra:
what needs the SDK is in the package's other modules (_sdk.py, spans.py, carrier.py,
meters.py), imported only where tracing is on. What is here is what the rest of kafkaworker
asks whether tracing is on or not: is the extra installed (`require`), which trace is current
(`current_ids`, for log lines and the dashboard), and which trace a record carries
(`trace_id_of`, for `dlq inspect`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from collections.abc import Iterable

from kafkaworker.errors import StartupError

# The W3C Trace Context header every record written with tracing on carries.
TRACEPARENT = "traceparent"
INSTALL = "pip install 'kafkaworker[otel]'"
_NEEDED = ("opentelemetry.sdk.trace", "opentelemetry.exporter.otlp.proto.http.trace_exporter")
_HEX = frozenset("0123456789abcdef")


def require() -> None:
    """Raise a one-line StartupError when the OpenTelemetry SDK or its OTLP exporter is not
    installed (tracing.enabled: true without the extra)."""
    for module in _NEEDED:
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # a parent package is missing
            found = False
        if not found:
            raise StartupError(
                f"tracing.enabled needs the OpenTelemetry SDK and its OTLP exporter "
                f"({module} is not installed): {INSTALL}"
            )


def sdk(service_name: str, *, metrics: bool = False) -> contextlib.AbstractContextManager[object]:
    """The OpenTelemetry SDK for a run (kafkaworker run, dlq replay) with tracing on: set up on
    entry unless the app installed its own, flushed on exit (_sdk.py). A one-line StartupError
    when the extra is not installed. The module is private so that importing it never
    replaces this function as the package's `sdk` attribute (a second traced run in one
    process, the in-process tests', found `tracing.sdk` a module)."""
    require()
    from kafkaworker.tracing._sdk import TracingSdk  # noqa: PLC0415 - the otel extra

    return TracingSdk(service_name, metrics=metrics)


def current_ids() -> tuple[str, str] | None:
    """(trace_id, span_id) in hex of the span current in this thread or task, if one is valid.

    Read through sys.modules: when OpenTelemetry was never imported there is no span, and a
    log line pays a dictionary lookup for finding that out."""
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return None
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


def trace_id_of(headers: Iterable[tuple[str, bytes | str | None]] | None) -> str | None:
    """The trace id of a record's `traceparent` header (W3C: 00-<trace id>-<span id>-<flags>),
    or None when it has none or it is malformed. The last header of the name wins, as
    Message.header() reads it."""
    value: bytes | str | None = None
    for name, found in headers or ():
        if name == TRACEPARENT:
            value = found
    if value is None:
        return None
    text = value.decode("ascii", errors="replace") if isinstance(value, bytes) else value
    parts = text.strip().split("-")
    if len(parts) < 4 or len(parts[0]) != 2 or parts[0] == "ff":
        return None
    trace_id = parts[1].lower()
    if len(trace_id) != 32 or not _HEX.issuperset(trace_id) or trace_id == "0" * 32:
        return None
    return trace_id

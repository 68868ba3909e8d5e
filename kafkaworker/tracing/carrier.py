"""Kafka record headers as an OpenTelemetry carrier: the configured propagator (W3C
`traceparent`/`tracestate` and `baggage` by default, OTEL_PROPAGATORS) reads and writes them.

Headers are a list of (name, value) pairs, values bytes (or None), names repeatable: the last
one of a name wins, as Message.header() reads it. Writing replaces every header of the names
the propagator writes, so that a record copied with its headers (a DLQ or retry record, a
replay) carries the writer's context, not a stale one beside it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from opentelemetry import propagate
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter, Setter

Headers = Sequence[tuple[str, Any]]


class _HeaderGetter(Getter[Headers]):
    def get(self, carrier: Headers, key: str) -> list[str] | None:
        found: Any = None
        for name, value in carrier:
            if name == key:
                found = value
        if found is None:
            return None
        return [found.decode("latin-1") if isinstance(found, bytes) else str(found)]

    def keys(self, carrier: Headers) -> list[str]:
        return [name for name, _ in carrier]


class _HeaderSetter(Setter[list[tuple[str, Any]]]):
    def set(self, carrier: list[tuple[str, Any]], key: str, value: str) -> None:
        carrier.append((key, value.encode("latin-1")))


GETTER = _HeaderGetter()
SETTER = _HeaderSetter()


def extract(headers: Headers, context: Context | None = None) -> Context:
    """The context the record's headers carry (empty when they carry none)."""
    return propagate.extract(headers, context, getter=GETTER)


def inject(headers: Iterable[tuple[str, Any]], context: Context | None = None) -> list[Any]:
    """The headers with the context's fields written (those of the names the propagator
    writes replaced); `context`: the current one when None."""
    fields = propagate.get_global_textmap().fields
    written = [(name, value) for name, value in headers if name not in fields]
    propagate.inject(written, context, setter=SETTER)
    return written

"""Prometheus metrics. One registry per Runner, so that tests (and embedders) stay isolated.

Failure paths count with labelled counters (rare events, any thread). The hot path does not
touch a metric: throughput figures come from the poll thread's own counters.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        labels = ["handler"]
        self.handler_failures = Counter(
            "kafkaworker_handler_failures",
            "Handler calls that raised",
            labels,
            registry=self.registry,
        )
        self.dead_lettered = Counter(
            "kafkaworker_dead_lettered",
            "Messages written to a dead-letter topic",
            labels,
            registry=self.registry,
        )
        self.retried_later = Counter(
            "kafkaworker_retried_later",
            "Messages sent to a delayed retry topic",
            labels,
            registry=self.registry,
        )
        self.dead_letter_write_failures = Counter(
            "kafkaworker_dead_letter_write_failures",
            "DLQ and retry-topic writes the broker did not acknowledge (the partition waits)",
            labels,
            registry=self.registry,
        )
        self.skipped = Counter(
            "kafkaworker_skipped",
            "Messages finished without handling (Skip, on_exhausted=skip)",
            labels,
            registry=self.registry,
        )
        self.stalled = Gauge(
            "kafkaworker_stalled_messages",
            "Messages past their retries, retried at the maximum backoff",
            labels,
            registry=self.registry,
        )
        self.circuit_open = Gauge(
            "kafkaworker_circuit_open",
            "1 while the handler's circuit breaker is open",
            labels,
            registry=self.registry,
        )

    def value(self, name: str, **labels: str) -> float:
        """A sample's current value (0 when absent): for tests and health checks."""
        return self.registry.get_sample_value(name, labels) or 0.0

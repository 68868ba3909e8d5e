"""The messaging metrics of the OpenTelemetry conventions, through the global meter
(tracing.metrics: true): how long processing a message took, how long a send took until the
broker's acknowledgement, and how many messages were consumed and sent. Prometheus' metrics
(observability/metrics.py) stay as they are; these are for an OpenTelemetry pipeline."""

from __future__ import annotations

import functools

from opentelemetry import metrics

from kafkaworker.tracing import conventions as sc
from kafkaworker.version import VERSION

# The conventions' advice for messaging durations (seconds): 5 ms to 10 s.
_DURATION_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10]


class MessagingMeters:
    """The four instruments, on kafkaworker's meter (a proxy until a MeterProvider is set)."""

    def __init__(self) -> None:
        meter = metrics.get_meter("kafkaworker", VERSION)
        self.process_duration = meter.create_histogram(
            sc.PROCESS_DURATION,
            unit="s",
            description="Duration of processing operation.",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )
        self.operation_duration = meter.create_histogram(
            sc.OPERATION_DURATION,
            unit="s",
            description="Duration of messaging operation initiated by a producer or consumer "
            "client.",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )
        self.sent = meter.create_counter(
            sc.SENT_MESSAGES,
            unit="{message}",
            description="Number of messages producer attempted to send to the broker.",
        )
        self.consumed = meter.create_counter(
            sc.CONSUMED_MESSAGES,
            unit="{message}",
            description="Number of messages that were delivered to the application.",
        )


@functools.cache
def messaging_meters() -> MessagingMeters:
    """The process's instruments: OpenTelemetry's meter is the process's, made once."""
    return MessagingMeters()

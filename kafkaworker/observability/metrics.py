"""Prometheus metrics. One registry per Runner, so that tests (and embedders) stay isolated.

The hot path does not touch a metric per message: the poll thread counts per batch and
refreshes its gauges once a second (`Poller._observe`), the pool adds handler time per
report. A per-message histogram would cost about a microsecond a message, a sixth of the
whole per-message budget of a decode-only handler, so handler time is exported as a sum
(`rate(seconds) / rate(handled)` is the mean); latency percentiles are the benchmarks' job.

Under `kafkaworker run --processes N` the supervisor sets PROMETHEUS_MULTIPROC_DIR for its
children: prometheus-client then keeps every value in a per-process file and the supervisor
serves their aggregate (see `multiprocess_registry`). The gauges' `multiprocess_mode` says
how processes combine: summed over live processes, or kept per pid (`liveall`) where the
health check needs each process's own value.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        # Values live in per-process files (a supervised child): series cannot be removed.
        self.multiprocess = bool(os.environ.get(MULTIPROC_ENV))
        if registry is None and not self.multiprocess:
            # RSS, CPU and open files of this process (a supervisor has its own view).
            ProcessCollector(registry=self.registry)
        labels = ["handler"]
        reg = self.registry
        self.consumed = Counter(
            "kafkaworker_messages_consumed",
            "Records fetched and handed to the handler's workers",
            labels,
            registry=reg,
        )
        self.finished = Counter(
            "kafkaworker_messages_finished",
            "Messages finished (handled, dead-lettered or skipped): their offsets may commit",
            labels,
            registry=reg,
        )
        self.handler_seconds = Counter(
            "kafkaworker_handler_seconds",
            "Time spent in handler calls (not in the waits between a failed call and its retry)",
            labels,
            registry=reg,
        )
        self.in_flight = Gauge(
            "kafkaworker_in_flight_messages",
            "Messages handed to the workers and not yet finished",
            labels,
            registry=reg,
            multiprocess_mode="livesum",
        )
        self.assigned_partitions = Gauge(
            "kafkaworker_assigned_partitions",
            "Partitions assigned to the handler's consumers",
            labels,
            registry=reg,
            multiprocess_mode="livesum",
        )
        self.paused_partitions = Gauge(
            "kafkaworker_paused_partitions",
            "Assigned partitions paused for backpressure, a delayed retry or an open breaker",
            labels,
            registry=reg,
            multiprocess_mode="livesum",
        )
        self.consumer_lag = Gauge(
            "kafkaworker_consumer_lag",
            "Records of the partition not finished yet: log end offset - committable position",
            [*labels, "topic", "partition"],
            registry=reg,
            multiprocess_mode="livesum",
        )
        self.consumer_lag_seconds = Gauge(
            "kafkaworker_consumer_lag_seconds",
            "Age of the partition's oldest record not finished yet (the first record of its "
            "run, so at most a poll batch older); when all fetched records are finished but "
            "the log has more, the age of the last fetched (the next is younger); 0 when "
            "caught up",
            [*labels, "topic", "partition"],
            registry=reg,
            multiprocess_mode="livemax",
        )
        self.transactions = Counter(
            "kafkaworker_transactions",
            "exactly_once handlers' transactions by outcome (committed, aborted)",
            [*labels, "outcome"],
            registry=reg,
        )
        self.transaction_seconds = Counter(
            "kafkaworker_transaction_seconds",
            "Seconds exactly_once handlers' poll threads spent in committed transactions "
            "(begin to commit; divided by the committed count: the mean)",
            labels,
            registry=reg,
        )
        self.rebalances = Counter(
            "kafkaworker_rebalances",
            "Rebalance callbacks by event (assigned, revoked, lost)",
            [*labels, "event"],
            registry=reg,
        )
        self.commits = Counter(
            "kafkaworker_offset_commits",
            "Offset commits sent (each of one or more partitions): periodic and on revoke",
            labels,
            registry=reg,
        )
        self.offset_map_fallbacks = Counter(
            "kafkaworker_offset_map_fallbacks",
            "Partition commits of a plain position because the offset map of what is finished "
            "above it did not fit offset.metadata.max.bytes (a crash then repeats that work)",
            labels,
            registry=reg,
        )
        self.commit_holds = Counter(
            "kafkaworker_commit_holds",
            "Times partitions stopped taking new work because the group coordinator left their "
            "commits unacknowledged for 0.5 s (a broker down: work finished then could not be "
            "committed and would run again)",
            labels,
            registry=reg,
        )
        self.offset_map_skipped = Counter(
            "kafkaworker_offset_map_skipped",
            "Records not handled again at assignment because the committed offset map lists "
            "them as finished",
            labels,
            registry=reg,
        )
        self.ready = Gauge(
            "kafkaworker_ready",
            "1 once the handler's consumer joined its group, 0 while starting or stopping",
            labels,
            registry=reg,
            multiprocess_mode="liveall",
        )
        self.heartbeat = Gauge(
            "kafkaworker_poll_heartbeat_timestamp_seconds",
            "Unix time of the poll thread's latest turn (refreshed every second)",
            labels,
            registry=reg,
            multiprocess_mode="liveall",
        )
        self.broker_silence = Gauge(
            "kafkaworker_broker_silence_seconds",
            "How long the brokers leading the handler's partitions have owed its consumer an "
            "answer (a hung or unreachable broker); 0 while they answer",
            labels,
            registry=reg,
            multiprocess_mode="liveall",
        )
        self.handler_failures = Counter(
            "kafkaworker_handler_failures",
            "Handler calls that raised",
            labels,
            registry=reg,
        )
        self.dead_lettered = Counter(
            "kafkaworker_dead_lettered",
            "Messages written to a dead-letter topic",
            labels,
            registry=reg,
        )
        self.retried_later = Counter(
            "kafkaworker_retried_later",
            "Messages sent to a delayed retry topic",
            labels,
            registry=reg,
        )
        self.dead_letter_write_failures = Counter(
            "kafkaworker_dead_letter_write_failures",
            "DLQ and retry-topic writes the broker did not acknowledge (the partition waits)",
            labels,
            registry=reg,
        )
        self.skipped = Counter(
            "kafkaworker_skipped",
            "Messages finished without handling (Skip, on_exhausted=skip)",
            labels,
            registry=reg,
        )
        # Counted by the inbox (kafkaworker.postgres) as it finds a message recorded already.
        self.deduplicated = Counter(
            "kafkaworker_deduplicated",
            "Inbox: messages delivered again but recorded as handled already, finished "
            "without running the handler",
            labels,
            registry=reg,
        )
        self.stalled = Gauge(
            "kafkaworker_stalled_messages",
            "Messages past their retries, retried at the maximum backoff",
            labels,
            registry=reg,
            multiprocess_mode="livesum",
        )
        # Queue mode (share groups): counted by the poll thread once per fetch or report.
        self.acknowledgements = Counter(
            "kafkaworker_acknowledgements",
            "Queue mode: records acknowledged to the share group, by type (accept: handled; "
            "release: to be delivered again; reject: archived, never delivered again)",
            [*labels, "type"],
            registry=reg,
        )
        self.deliveries = Counter(
            "kafkaworker_deliveries",
            "Queue mode: records fetched, by their delivery count (1: first delivery; the "
            "last bucket is 10 and more)",
            [*labels, "delivery"],
            registry=reg,
        )
        self.lock_expiries = Counter(
            "kafkaworker_lock_expiries",
            "Queue mode: records still unacknowledged when their acquisition lock ran out, or "
            "whose acknowledgement the broker refused (delivered again)",
            labels,
            registry=reg,
        )
        self.circuit_open = Gauge(
            "kafkaworker_circuit_open",
            "1 while the handler's circuit breaker is open",
            labels,
            registry=reg,
            multiprocess_mode="livemax",
        )

        self.operator_actions = Counter(
            "kafkaworker_operator_actions",
            "Operator actions from the dashboard carried out, by action (pause, resume, "
            "open_breaker, close_breaker)",
            [*labels, "action"],
            registry=reg,
        )

        # The outbox relay (kafkaworker.outbox), labelled by its table. Observed once per
        # publication round (up to postgres.outbox.batch rows), never per produce call.
        table = ["table"]
        self.outbox_published = Counter(
            "kafkaworker_outbox_published",
            "Outbox rows the broker acknowledged and the relay marked published",
            table,
            registry=reg,
        )
        self.outbox_publish_seconds = Histogram(
            "kafkaworker_outbox_publish_seconds",
            "Outbox rows from their transaction's start (created_at, the commit's upper "
            "bound for short transactions) to the broker's acknowledgement and the mark, by "
            "the database's clock",
            table,
            registry=reg,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
        )
        self.outbox_relay_active = Gauge(
            "kafkaworker_outbox_relay_active",
            "1 while this process's relay holds the outbox table's lock (0: standing by); "
            "summed over a fleet it is 1",
            table,
            registry=reg,
            multiprocess_mode="livesum",
        )
        self.outbox_backlog = Gauge(
            "kafkaworker_outbox_backlog",
            "Outbox rows not yet published, as the active relay last counted them (at most "
            "once a second)",
            table,
            registry=reg,
            multiprocess_mode="livemax",
        )

    def value(self, name: str, **labels: str) -> float:
        """A sample's current value (0 when absent): for tests and health checks."""
        return self.registry.get_sample_value(name, labels) or 0.0


def multiprocess_registry(path: str) -> CollectorRegistry:
    """A registry that reads every worker process's metric files under `path`."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
    return registry

"""TopicWorker: one consumer, one poll thread and one pool, for one handler."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Mapping
from typing import Any

import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException

from kafkaworker.errors import StartupError
from kafkaworker.handlers import HandlerSpec
from kafkaworker.observability.metrics import Metrics
from kafkaworker.producer import Producer
from kafkaworker.runtime.breaker import CircuitBreaker
from kafkaworker.runtime.deadletter import FailurePublisher
from kafkaworker.runtime.poller import Poller
from kafkaworker.runtime.pool import Completion, WorkerPool
from kafkaworker.runtime.retrytopics import RetryRoutes
from kafkaworker.serialization import Codec
from kafkaworker.settings import Settings

log = structlog.get_logger("kafkaworker.worker")


def consumer_config(app_name: str, spec: HandlerSpec, settings: Settings) -> dict[str, Any]:
    """librdkafka configuration for a handler's consumer; raw `kafka.consumer` keys win."""
    config: dict[str, Any] = {
        "bootstrap.servers": settings.kafka.bootstrap_servers,
        "group.id": spec.group or app_name,
        "client.id": f"{app_name}.{spec.name}",
        # At-least-once: offsets are stored only when finished (by the poll thread), and
        # librdkafka's auto-commit commits what is stored; revoke and shutdown commit at once.
        "enable.auto.commit": True,
        "enable.auto.offset.store": False,
        "auto.commit.interval.ms": max(1, round(settings.commit_interval * 1000)),
        "auto.offset.reset": settings.auto_offset_reset,
        "enable.partition.eof": False,
        # When the local queue is full librdkafka waits this long before fetching the
        # partition again; its 1000 ms capped a backlog drain at about 150k records/s here
        # (the raw loop did 1.1M with 10 ms). The queue stays bounded by queued.max.messages.*.
        "fetch.queue.backoff.ms": 10,
        "logger": logging.getLogger("kafkaworker.librdkafka"),
    }
    raw = settings.kafka.consumer
    kip848 = settings.kafka.group_protocol == "consumer" or raw.get("group.protocol") == "consumer"
    if kip848:
        config["group.protocol"] = "consumer"  # KIP-848: assignment is the broker's job
        # The readiness probe reads the group state from librdkafka's statistics (see
        # TopicWorker): KIP-848 calls no assign callback for a member given no partitions.
        config["statistics.interval.ms"] = 1000
    else:
        config["partition.assignment.strategy"] = "cooperative-sticky"
        # Members learn of a rebalance from a heartbeat, and cooperative rebalancing takes two
        # rounds: at librdkafka's 3 s a new member waited 2.5-5.5 s for partitions, at 1 s
        # 1.5 s (measured here). Scaling out should take effect that fast; the cost is one
        # small request a second per member. (KIP-848: the broker sets the interval.)
        config["heartbeat.interval.ms"] = 1000
    config.update(raw)
    return config


def new_consumer(config: dict[str, Any]) -> Consumer:
    try:
        return Consumer(config)
    except (KafkaException, ValueError, TypeError) as exc:
        raise StartupError(f"the consumer configuration was rejected: {_reason(exc)}") from None


def _reason(exc: Exception) -> str:
    if isinstance(exc, KafkaException) and isinstance(exc.args[0], KafkaError):
        return str(exc.args[0].str())
    return " ".join(str(exc).split())


def new_breaker(settings: Settings, handler: str) -> CircuitBreaker | None:
    """The handler's breaker (handlers.<name>.circuit_breaker, else the global one)."""
    override = settings.handlers.get(handler)
    config = (override.circuit_breaker if override else None) or settings.circuit_breaker
    if not config.enabled:
        return None
    return CircuitBreaker(
        threshold=config.threshold,
        window=config.window,
        min_messages=config.min_messages,
        cooldown=config.cooldown,
    )


class TopicWorker:
    """Owns its consumer (through the Poller), its pool and its poll thread, and stops them."""

    def __init__(
        self,
        app_name: str,
        spec: HandlerSpec,
        settings: Settings,
        *,
        producer: Producer | None = None,
        metrics: Metrics | None = None,
        runtime_codecs: Mapping[str, Codec] | None = None,
    ) -> None:
        self.spec = spec
        self.settings = settings
        self.config = consumer_config(app_name, spec, settings)
        self.metrics = metrics or Metrics()
        failures = breaker = routes = None
        if spec.retry_topics:
            routes = RetryRoutes(spec.topics, spec.retry_topics)
        if spec.dlq is not None or routes is not None:
            if producer is None:
                raise ValueError(f"handler {spec.name!r} writes failures but has no producer")
            failures = FailurePublisher(
                producer,
                spec.dlq,
                group=self.config["group.id"],
                handler=spec.name,
                timeout=settings.dead_letter.timeout,
            )
        if spec.dlq is not None:
            breaker = new_breaker(settings, spec.name)
        completions: queue.SimpleQueue[list[Completion]] = queue.SimpleQueue()
        self.pool = WorkerPool(
            spec,
            completions,
            name=f"kw-{spec.name}",
            failures=failures,
            routes=routes,
            breaker=breaker,
            metrics=self.metrics,
            producer=producer,
            produce_timeout=settings.produce_timeout,
            runtime_codecs=runtime_codecs,
        )
        if self.config.get("group.protocol") == "consumer":
            self.config["stats_cb"] = self._on_statistics  # called inside poll(): poll thread
        self.poller = Poller(
            spec,
            settings,
            new_consumer(self.config),
            self.pool,
            completions,
            breaker=breaker,
            metrics=self.metrics,
            routes=routes,
            runtime_codecs=runtime_codecs,
        )
        self._thread = threading.Thread(
            target=self._run_poller, name=f"kw-{spec.name}-poll", daemon=True
        )
        self.error: BaseException | None = None

    def start(self) -> None:
        self.pool.start()
        self._thread.start()

    def request_stop(self) -> None:
        self.poller.request_stop()

    def join(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _on_statistics(self, statistics: str) -> None:
        self.poller.on_statistics(statistics)

    def _run_poller(self) -> None:
        try:
            self.poller.run()
        except BaseException as exc:  # recorded for the Runner, which decides the exit code
            self.error = exc
            log.exception("poll thread failed", handler=self.spec.name)

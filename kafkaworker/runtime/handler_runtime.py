"""HandlerRuntime: one handler's source, executor and poll thread, wired together."""

from __future__ import annotations

import queue
import threading
from collections.abc import Mapping

import structlog

from kafkaworker.handlers import HandlerSpec
from kafkaworker.observability.metrics import Metrics
from kafkaworker.producer import Producer
from kafkaworker.runtime.clock import SYSTEM_CLOCK, Clock, ManualClock
from kafkaworker.runtime.execute import Executor
from kafkaworker.runtime.execute.aio import AsyncPool
from kafkaworker.runtime.execute.attempts import Attempts
from kafkaworker.runtime.execute.batches import BatchRunner
from kafkaworker.runtime.execute.event_loop import EventLoopThread
from kafkaworker.runtime.execute.outputs import Outputs
from kafkaworker.runtime.execute.pool import WorkerPool
from kafkaworker.runtime.execute.revocations import Revocations
from kafkaworker.runtime.failures.breaker import CircuitBreaker
from kafkaworker.runtime.failures.deadletter import FailureRecords
from kafkaworker.runtime.failures.policy import FailurePolicy
from kafkaworker.runtime.failures.retrytopics import RetryRoutes
from kafkaworker.runtime.handoff import Completion
from kafkaworker.runtime.poll.commit import StoredOffsetCommit
from kafkaworker.runtime.poll.delayed import DelayedRetries
from kafkaworker.runtime.poll.poller import Poller
from kafkaworker.runtime.poll.share_poller import SharePoller
from kafkaworker.runtime.source import ShareSource, Source
from kafkaworker.runtime.source.consumer_group import ConsumerGroupSource, consumer_config
from kafkaworker.runtime.source.share_group import (
    ShareGroupConfig,
    ShareGroupSource,
    prepare_share_group,
    share_consumer_config,
)
from kafkaworker.serialization import Codec
from kafkaworker.serialization.models import ModelCodec
from kafkaworker.settings import Settings

log = structlog.get_logger("kafkaworker.runtime")


def new_breaker(
    settings: Settings, handler: str, clock: Clock = SYSTEM_CLOCK
) -> CircuitBreaker | None:
    """The handler's breaker (handlers.<name>.circuit_breaker, else the global one). Not in
    queue mode (the caller's check): a breaker holds messages by pausing partitions, and a
    share consumer has no pause; a record held there would hold its member's next fetch."""
    override = settings.handlers.get(handler)
    config = (override.circuit_breaker if override else None) or settings.circuit_breaker
    if not config.enabled:
        return None
    return CircuitBreaker(
        threshold=config.threshold,
        window=config.window,
        min_messages=config.min_messages,
        cooldown=config.cooldown,
        clock=clock.monotonic,
    )


class HandlerRuntime:
    """Owns one handler's source (through the Poller), its executor and its poll thread, and
    stops them. `source`: a consumer group of the handler's group by default; in queue mode
    `share_source` (with its `share_group` config), a share group's member by default.
    `loop`: the process's event loop, which async handlers run on. `virtual_time` (the test
    client): the clock the runtime reads, which backoffs advance instead of waiting."""

    def __init__(
        self,
        app_name: str,
        spec: HandlerSpec,
        settings: Settings,
        *,
        producer: Producer | None = None,
        metrics: Metrics | None = None,
        runtime_codecs: Mapping[str, Codec] | None = None,
        source: Source | None = None,
        share_source: ShareSource | None = None,
        share_group: ShareGroupConfig | None = None,
        loop: EventLoopThread | None = None,
        virtual_time: ManualClock | None = None,
    ) -> None:
        self.spec = spec
        self.settings = settings
        self.metrics = metrics or Metrics()
        clock: Clock = virtual_time if virtual_time is not None else SYSTEM_CLOCK
        group = spec.group or app_name
        routes = RetryRoutes(spec.topics, spec.retry_topics) if spec.retry_topics else None
        writes = spec.dlq is not None or routes is not None or spec.output is not None
        if writes and producer is None:
            raise ValueError(f"handler {spec.name!r} writes records but has no producer")
        records = None
        if spec.dlq is not None or routes is not None:
            records = FailureRecords(spec.dlq, group=group, handler=spec.name, clock=clock)
        queue_mode = spec.mode == "queue"
        self.breaker = breaker = (
            new_breaker(settings, spec.name, clock)
            if spec.dlq is not None and not queue_mode
            else None
        )
        # Codecs are resolved once per handler: the value codec encodes outputs, and decodes
        # messages (validating into the handler's model, when it has one).
        self.codec = codec = spec.value_codec(runtime_codecs)
        outputs = None
        if producer is not None:
            outputs = Outputs(
                producer,
                topic=spec.output,
                codec=codec,
                produce_timeout=settings.produce_timeout,
                write_timeout=settings.dead_letter.timeout,
            )
        completions: queue.SimpleQueue[list[Completion]] = queue.SimpleQueue()
        policy = FailurePolicy(
            spec, routes=routes, can_publish=records is not None, breaker=breaker
        )
        self.attempts = attempts = Attempts(
            spec,
            policy,
            completions,
            metrics=self.metrics,
            records=records,
            emits=spec.output is not None,
        )
        batches = (
            BatchRunner(spec, attempts, completions, metrics=self.metrics) if spec.batch else None
        )
        self.executor: Executor
        self.error: BaseException | None = None
        if spec.is_async:
            if loop is None:
                raise ValueError(f"handler {spec.name!r} is async but no event loop was given")
            self.executor = AsyncPool(
                spec,
                attempts,
                completions,
                loop=loop,
                metrics=self.metrics,
                outputs=outputs,
                batches=batches,
                virtual=virtual_time,
            )
        else:
            self.executor = WorkerPool(
                spec,
                attempts,
                completions,
                name=f"kw-{spec.name}",
                revocations=Revocations(),
                metrics=self.metrics,
                outputs=outputs,
                batches=batches,
                virtual=virtual_time,
            )
        attempts.resubmit = self.executor.submit  # a message nacked after its handler returned
        value_codec = ModelCodec(codec, spec.model) if spec.model is not None else codec
        self.poller: Poller | SharePoller
        if queue_mode:
            # Queue mode (KIP-932): a share group, no offsets, per-record acknowledgements.
            # Given a source (tests: memory_share.py), its group config comes with it.
            share = share_group or prepare_share_group(settings, group)
            attempts.delivery_limit = share.delivery_limit
            self.share_group: ShareGroupConfig | None = share
            if share_source is None:
                config = share_consumer_config(app_name, spec, settings)
                share_source = ShareGroupSource(config, handler=spec.name)
            self.poller = SharePoller(
                spec,
                settings,
                share_source,
                self.executor,
                completions,
                codec=value_codec,
                group=share,
                metrics=self.metrics,
            )
        else:
            self.share_group = None
            if source is None:
                config = consumer_config(app_name, spec, settings)
                source = ConsumerGroupSource(
                    config, handler=spec.name, join_timeout=settings.join_timeout
                )
            self.source = source
            self.committer = StoredOffsetCommit(source, handler=spec.name)
            self.poller = Poller(
                spec,
                settings,
                source,
                self.executor,
                completions,
                committer=self.committer,
                codec=value_codec,
                topics=[*spec.topics, *(s.topic for s in routes.stages)] if routes else spec.topics,
                delayed=DelayedRetries(routes.retry_topics if routes else (), clock=clock),
                breaker=breaker,
                metrics=self.metrics,
                clock=clock,
            )
        self._thread = threading.Thread(
            target=self._run_poller, name=f"kw-{spec.name}-poll", daemon=True
        )

    def start(self) -> None:
        self.executor.start()
        self._thread.start()

    def request_stop(self) -> None:
        self.poller.request_stop()

    def join(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run_poller(self) -> None:
        try:
            self.poller.run()
        except BaseException as exc:  # recorded for the Runner, which decides the exit code
            self.error = exc
            log.exception("poll thread failed", handler=self.spec.name)

"""The composition root: the one place the runtime is built, from an app, its settings, where
records come from (Sources), a producer and a clock.

`kafkaworker run` (the Runner), the TestClient and the tests all build it here, so what a test
runs is wired as production is; what differs is what they pass in: the Runner the cluster's
consumer and share groups, the system clock and the app's producer; the TestClient in-memory
sources, a virtual clock and a producer that keeps what it is given. What wraps every handler
call or every commit is added here (and in the executor core), once.
"""

from __future__ import annotations

import contextlib
import queue
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

from kafkaworker.handlers import HandlerSpec, is_async_callable
from kafkaworker.inbox import GroupCommitted
from kafkaworker.observability.metrics import Metrics
from kafkaworker.producer import Producer
from kafkaworker.runtime.clock import SYSTEM_CLOCK, Clock
from kafkaworker.runtime.execute.attempts import Attempts
from kafkaworker.runtime.execute.batches import BatchRunner
from kafkaworker.runtime.execute.core import ExecutorCore
from kafkaworker.runtime.execute.coroutines import AsyncPool
from kafkaworker.runtime.execute.event_loop import EventLoopThread
from kafkaworker.runtime.execute.outputs import FailureRecords, HeldOutputs, Outputs
from kafkaworker.runtime.execute.threads import WorkerPool
from kafkaworker.runtime.failures.policy import CircuitBreaker, FailurePolicy
from kafkaworker.runtime.failures.retrytopics import RetryRoutes
from kafkaworker.runtime.handler_runtime import HandlerRuntime
from kafkaworker.runtime.handoff import Completion, Executor, HeldWrites
from kafkaworker.runtime.poll.delayed import DelayedRetries
from kafkaworker.runtime.poll.poller import Committer, OffsetCommit, Poller, PollLoop
from kafkaworker.runtime.poll.share_poller import SharePoller
from kafkaworker.runtime.poll.transactions import TransactionalCommit
from kafkaworker.runtime.source import ShareSource, Source
from kafkaworker.runtime.source.share_group import ShareGroupConfig
from kafkaworker.serialization import Codec
from kafkaworker.serialization.models import ModelCodec
from kafkaworker.settings import Settings

if TYPE_CHECKING:
    from kafkaworker.app import App, Lifespan
    from kafkaworker.inbox import InboxCalls, Relay
    from kafkaworker.runtime.poll.transactions import TransactionalClient
    from kafkaworker.tracing.spans import ProcessSpans, TransactionSpans


class Transactions(Protocol):
    """Makes an exactly_once handler's transactional producer, initialised."""

    def __call__(
        self, app_name: str, spec: HandlerSpec, settings: Settings
    ) -> TransactionalClient: ...


def kafka_transactions(app_name: str, spec: HandlerSpec, settings: Settings) -> TransactionalClient:
    """The cluster's: a confluent-kafka transactional producer per handler and process."""
    from kafkaworker.runtime.poll.transactions import (  # noqa: PLC0415 - a client
        new_transactional_client,
        transactional_config,
    )

    return new_transactional_client(
        transactional_config(app_name, spec, settings), timeout=settings.startup_timeout
    )


class Sources(Protocol):
    """Where each handler's records come from."""

    def stream(self, spec: HandlerSpec) -> Source:
        """A consumer group's member for a stream-mode handler."""
        ...

    def queue(self, spec: HandlerSpec) -> tuple[ShareSource, ShareGroupConfig]:
        """A share group's member for a queue-mode handler, with the group's configuration
        (its delivery count limit, its lock duration)."""
        ...


class KafkaSources:
    """The cluster's: a consumer group, or a share group, per handler (its own group or the
    app's name)."""

    def __init__(self, app_name: str, settings: Settings) -> None:
        self._app = app_name
        self._settings = settings

    def stream(self, spec: HandlerSpec) -> Source:
        from kafkaworker.runtime.source.consumer_group import (  # noqa: PLC0415 - a client
            ConsumerGroupSource,
            consumer_config,
        )

        config = consumer_config(self._app, spec, self._settings)
        return ConsumerGroupSource(
            config, handler=spec.name, join_timeout=self._settings.join_timeout
        )

    def queue(self, spec: HandlerSpec) -> tuple[ShareSource, ShareGroupConfig]:
        from kafkaworker.runtime.source.share_group import (  # noqa: PLC0415 - a client
            ShareGroupSource,
            prepare_share_group,
            share_consumer_config,
        )

        # Read (and completed) at start-up: the delivery count limit and lock duration.
        share = prepare_share_group(self._settings, spec.group or self._app)
        config = share_consumer_config(self._app, spec, self._settings)
        return ShareGroupSource(config, handler=spec.name), share


class GivenSources:
    """Sources made beforehand, by handler name (the tests', the benchmarks')."""

    def __init__(
        self,
        stream: Mapping[str, Source] | None = None,
        queue: Mapping[str, tuple[ShareSource, ShareGroupConfig]] | None = None,
    ) -> None:
        self._stream = dict(stream or {})
        self._queue = dict(queue or {})

    def stream(self, spec: HandlerSpec) -> Source:
        return self._stream[spec.name]

    def queue(self, spec: HandlerSpec) -> tuple[ShareSource, ShareGroupConfig]:
        return self._queue[spec.name]


def new_breaker(settings: Settings, handler: str, clock: Clock) -> CircuitBreaker | None:
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


def build_handler(
    app_name: str,
    spec: HandlerSpec,
    settings: Settings,
    *,
    sources: Sources,
    producer: Producer | None = None,
    metrics: Metrics | None = None,
    codecs: Mapping[str, Codec] | None = None,
    loop: EventLoopThread | None = None,
    clock: Clock = SYSTEM_CLOCK,
    transactions: Transactions = kafka_transactions,
    inbox: InboxCalls | None = None,
) -> HandlerRuntime:
    """One handler's runtime: its failure path, executor, poll loop and source, wired.
    `transactions`: how an exactly_once handler's transactional producer is made; `inbox`:
    the handler's open inbox (spec.inbox), whose transaction wraps every call."""
    metrics = metrics or Metrics()
    exactly_once = spec.processing_guarantee == "exactly_once"
    group = spec.group or app_name
    routes = RetryRoutes(spec.topics, spec.retry_topics) if spec.retry_topics else None
    writes = spec.dlq is not None or routes is not None or spec.output is not None
    if writes and not producer and not exactly_once:
        raise ValueError(f"handler {spec.name!r} writes records but has no producer")
    records = None
    if spec.dlq is not None or routes is not None:
        records = FailureRecords(spec.dlq, group=group, handler=spec.name, clock=clock)
    queue_mode = spec.mode == "queue"
    breaker = (
        new_breaker(settings, spec.name, clock) if spec.dlq is not None and not queue_mode else None
    )
    # The value codec encodes outputs and decodes messages (validating into the handler's
    # model, when it has one); resolved once per handler.
    codec = spec.value_codec(codecs)
    completions: queue.SimpleQueue[list[Completion]] = queue.SimpleQueue()
    policy = FailurePolicy(spec, routes=routes, can_publish=records is not None, breaker=breaker)
    attempts = Attempts(spec, policy, metrics=metrics, records=records)
    if spec.inbox is not None:
        if inbox is None:
            raise ValueError(f"handler {spec.name!r} has an inbox but it was not opened")
        # The one handler call both the executor core's inline path and the failure path
        # (Attempts, retries included) make: each attempt in a transaction of its own, rolled
        # back before the policy's next step (a backoff, the DLQ write).
        attempts.call = inbox.wrap(spec.call_with_connection())
    spans = process_spans(app_name, spec, settings) if settings.tracing.enabled else None
    attempts.spans = spans
    batches = BatchRunner(spec, attempts, metrics=metrics, spans=spans) if spec.batch else None
    if batches is not None and inbox is not None:
        batches.call = inbox.wrap_batch(spec.call_with_connection())  # a transaction per batch
    core = ExecutorCore(
        spec, attempts, completions, metrics=metrics, batches=batches, clock=clock, spans=spans
    )
    outputs: Outputs | None = None
    held: HeldWrites | None = None
    transaction_spans: TransactionSpans | None = None
    if exactly_once:
        # The writes of finished messages are held for the poll thread's transaction (the
        # hand-off rule: runtime/handoff.py, HeldWrites), never produced by the workers.
        held = HeldWrites()
        if settings.tracing.enabled:
            transaction_spans = new_transaction_spans(app_name, spec, settings)
        outputs = HeldOutputs(
            producer,
            held,
            topic=spec.output,
            codec=codec,
            produce_timeout=settings.produce_timeout,
            write_timeout=settings.dead_letter.timeout,
            spans=transaction_spans.sends if transaction_spans is not None else None,
        )
    elif producer is not None:
        outputs = Outputs(
            producer,
            topic=spec.output,
            codec=codec,
            produce_timeout=settings.produce_timeout,
            write_timeout=settings.dead_letter.timeout,
        )
    executor: Executor
    if spec.is_async:
        if loop is None:
            raise ValueError(f"handler {spec.name!r} is async but no event loop was given")
        executor = AsyncPool(core, loop=loop, outputs=outputs)
    else:
        executor = WorkerPool(core, name=f"kw-{spec.name}", outputs=outputs)
    attempts.resubmit = executor.submit  # a message nacked after its handler returned
    value_codec = ModelCodec(codec, spec.model) if spec.model is not None else codec
    poller: PollLoop
    if queue_mode:
        share_source, share = sources.queue(spec)
        policy.delivery_limit = share.delivery_limit
        poller = SharePoller(
            spec,
            settings,
            share_source,
            executor,
            completions,
            codec=value_codec,
            group=share,
            metrics=metrics,
            clock=clock,
        )
    else:
        source = sources.stream(spec)
        topics = [*spec.topics, *(s.topic for s in routes.stages)] if routes else spec.topics
        committer: Committer
        transactional: TransactionalCommit | None = None
        if held is not None:
            transactional = committer = TransactionalCommit(
                transactions(app_name, spec, settings),
                source,  # type: ignore[arg-type]  # the sources of stream mode are
                held,
                handler=spec.name,
                interval=settings.transaction_interval,
                api_timeout=settings.produce_timeout,
                metrics=metrics,
                clock=clock,
                renew=lambda: transactions(app_name, spec, settings),
                spans=transaction_spans,
            )
        else:
            committer = OffsetCommit(
                source,
                handler=spec.name,
                interval=settings.commit_interval,
                max_metadata=settings.offset_metadata_max_bytes,
                clock=clock,
                metrics=metrics,
            )
        poller = Poller(
            spec,
            settings,
            source,
            executor,
            completions,
            committer=committer,
            codec=value_codec,
            topics=topics,
            delayed=DelayedRetries(routes.retry_topics if routes else (), clock=clock),
            breaker=breaker,
            metrics=metrics,
            clock=clock,
        )
        if transactional is not None:
            transactional.lease_of = poller.lease_of
    return HandlerRuntime(spec, poller, executor, attempts, breaker, codec)


def process_spans(app_name: str, spec: HandlerSpec, settings: Settings) -> ProcessSpans:
    """The handler's process spans (tracing.enabled): named as its consumer is, with its
    group's name."""
    # Imported here: the OpenTelemetry SDK is an extra, needed only with tracing on.
    from kafkaworker.tracing import require  # noqa: PLC0415

    require()
    from kafkaworker.tracing.meters import messaging_meters  # noqa: PLC0415
    from kafkaworker.tracing.spans import ProcessSpans  # noqa: PLC0415

    kafka = settings.kafka
    consumer = kafka.share_consumer if spec.mode == "queue" else kafka.consumer
    return ProcessSpans(
        handler=spec.name,
        group=spec.group or app_name,
        client_id=str(consumer.get("client.id", f"{app_name}.{spec.name}")),
        link=spec.trace_parent == "link",
        batch_links=settings.tracing.batch_links,
        meters=messaging_meters() if settings.tracing.metrics else None,
    )


def new_transaction_spans(app_name: str, spec: HandlerSpec, settings: Settings) -> TransactionSpans:
    """An exactly_once handler's send and commit spans (tracing.enabled), named after its
    transactional producer (runtime/poll/transactions.py, transactional_config)."""
    from kafkaworker.tracing.meters import messaging_meters  # noqa: PLC0415 - the otel extra
    from kafkaworker.tracing.spans import TransactionSpans  # noqa: PLC0415

    return TransactionSpans(
        handler=spec.name,
        group=spec.group or app_name,
        client_id=str(settings.kafka.producer.get("client.id", f"{app_name}.{spec.name}.tx")),
        links=settings.tracing.batch_links,
        meters=messaging_meters() if settings.tracing.metrics else None,
    )


class AppRuntime:
    """An app's runtime in this process: the event loop (when a handler or hook is async), the
    app's lifespan (hooks, app.producer) and a HandlerRuntime per handler. Entered, it is
    built; start() starts the handlers; stop() (or leaving it) drains them, then the lifespan
    ends and the loop closes. Owns all of them and their stop path.

    `producer`: app.producer for the run (default: built from the settings, eagerly when a
    handler writes records). `codecs`: codecs built for the run by name (the Schema Registry's).
    `transactions`: makes exactly_once handlers' transactional producers (the cluster's).
    """

    def __init__(
        self,
        app: App,
        settings: Settings,
        specs: Sequence[HandlerSpec],
        *,
        sources: Sources,
        metrics: Metrics | None = None,
        producer: Producer | None = None,
        codecs: Mapping[str, Codec] | None = None,
        clock: Clock = SYSTEM_CLOCK,
        transactions: Transactions = kafka_transactions,
    ) -> None:
        self.app = app
        self._transactions = transactions
        self.settings = settings
        self.specs = list(specs)
        self.sources = sources
        self.metrics = metrics or Metrics()
        self.clock = clock
        self._producer = producer
        self._codecs = codecs
        self.handlers: list[HandlerRuntime] = []
        self.loop: EventLoopThread | None = None
        self._lifespan: Lifespan | None = None
        self._stack = contextlib.ExitStack()
        self._relay: Relay | None = None

    @property
    def shutdown_failed(self) -> bool:
        """Whether a shutdown hook failed (known once the runtime is left)."""
        return self._lifespan is not None and self._lifespan.shutdown_failed

    def __enter__(self) -> AppRuntime:
        with contextlib.ExitStack() as stack:  # left at once if the build fails
            self._build(stack)
            self._stack = stack.pop_all()
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            self.stop()
        finally:
            self._stack.close()

    def _build(self, stack: contextlib.ExitStack) -> None:
        hooks = [*self.app.startup_hooks, *self.app.shutdown_hooks]
        if any(spec.is_async for spec in self.specs) or any(map(is_async_callable, hooks)):
            # The process's event loop: async handlers and async hooks share it.
            self.loop = EventLoopThread(kind=self.settings.event_loop).start()
            stack.callback(self.loop.close)
        self._lifespan = stack.enter_context(
            self.app.lifespan(
                self.settings,
                run_async=self.loop.run if self.loop is not None else None,
                producer=self._producer,
            )
        )
        # exactly_once handlers write through their own transactional producers.
        writes = any(
            spec.dlq or spec.retry_topics or spec.output
            for spec in self.specs
            if spec.processing_guarantee != "exactly_once"
        )
        producer = self.app.producer if writes else None
        inboxes: dict[str, InboxCalls] = {}
        for spec in self.specs:
            if spec.inbox is not None:
                # Each handler's own pool, sized to its concurrency; closed by the stack once
                # the handlers are drained (stop() runs before it).
                group = spec.group or self.app.name
                calls = spec.inbox.open(
                    spec,
                    group=group,
                    metrics=self.metrics,
                    run_async=self.loop.run if self.loop is not None else None,
                    settings=self.settings,
                )
                stack.callback(calls.close)
                inboxes[spec.name] = calls
                if isinstance(self.sources, KafkaSources):
                    # The cleanup reads the group's committed offsets from Kafka: with the
                    # cluster's groups only (not the TestClient's in-memory ones).
                    calls.start_cleanup(GroupCommitted(self.settings, group, spec.topics))
        outbox = self.app.declared_outbox
        if outbox is not None and isinstance(self.sources, KafkaSources):
            # `kafkaworker run`: the relay beside the handlers (the TestClient has no
            # cluster to publish to). Stopped after the handlers drained: a handler's last
            # transaction may add to the outbox.
            self._relay = outbox.relay(
                self.settings, client_id=f"{self.app.name}.outbox", metrics=self.metrics
            )
            stack.callback(self._relay.stop)
        self.handlers = [
            build_handler(
                self.app.name,
                spec,
                self.settings,
                sources=self.sources,
                producer=producer,
                metrics=self.metrics,
                codecs=self._codecs,
                loop=self.loop,
                clock=self.clock,
                transactions=self._transactions,
                inbox=inboxes.get(spec.name),
            )
            for spec in self.specs
        ]

    def start(self) -> None:
        if self._relay is not None:
            self._relay.start()
        for handler in self.handlers:
            handler.start()

    def stop(self) -> None:
        """Drain every handler (each poll thread bounds its own drain by shutdown_timeout; the
        margin covers the final commit and leaving the group)."""
        for handler in self.handlers:
            handler.request_stop()
        deadline = time.monotonic() + self.settings.shutdown_timeout + 15
        for handler in self.handlers:
            handler.join(max(0.0, deadline - time.monotonic()))

"""TestClient: an app's handlers in-process, on the real execution path, with no Kafka.

    with TestClient(app) as client:
        delivery = client.send("orders", {"id": 1}, key="customer-9")
        assert delivery.outcome == "dead_lettered" and delivery.attempts == 6
        [record] = client.records("orders.dlq")

Every handler runs as it does in production: its codec and model, the same lanes and
executors (threads for def handlers, the event loop for async def ones), the same failure
decisions, outputs, batches, manual acks and retry topics. What differs: records come from
an in-memory log instead of a broker, what the app produces is kept in memory
(`records()`), and time is virtual: a 30 s backoff advances the clock instead of waiting, so
a test of `retries=5` runs in milliseconds. So does a circuit breaker's cooldown: a send made
while the breaker is open (its handler's partitions paused) advances the clock to the end of
the cooldown, and the message then runs as it would once the breaker closed.

Queue-mode handlers (share groups) run over an in-memory share group of one member: a failed
delivery is RELEASEd and delivered again at once (`msg.attempt` raised), up to the group's
delivery limit (`delivery_limit`, Kafka's default 5), then dead-lettered or REJECTed.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from kafkaworker import headers as kw_headers
from kafkaworker.app import App
from kafkaworker.errors import ConfigError
from kafkaworker.handlers import HandlerSpec, resolve_specs
from kafkaworker.headers import int_header
from kafkaworker.message import Message
from kafkaworker.runtime.clock import VirtualClock
from kafkaworker.runtime.compose import AppRuntime
from kafkaworker.runtime.failures.policy import Action, Decision
from kafkaworker.runtime.failures.retrytopics import RetryRoutes
from kafkaworker.runtime.handler_runtime import HandlerRuntime
from kafkaworker.runtime.handoff import Completion
from kafkaworker.runtime.handoff import Outcome as Reported
from kafkaworker.runtime.source import Partition, ShareSource, Source
from kafkaworker.runtime.source.memory import MemoryBroker, MemorySource
from kafkaworker.runtime.source.memory_share import MemoryShareSource
from kafkaworker.runtime.source.share_group import ShareGroupConfig
from kafkaworker.settings import Settings, settings_for_run
from kafkaworker.testing.producer import MemoryProducer, MemoryTransactions, ProducedRecord

Outcome = Literal[
    "finished", "dead_lettered", "retry_topic", "skipped", "stalled", "awaiting_ack", "rejected"
]
_UNSETTLED = (Reported.NOT_FINISHED, Reported.RELEASED)
_FINAL = {
    Action.DEAD_LETTER: "dead_lettered",
    Action.RETRY_TOPIC: "retry_topic",
    Action.SKIP: "skipped",
}


@dataclass
class Delivery:
    """What happened to one message in one handler."""

    handler: str
    topic: str
    partition: int
    offset: int
    # finished: handled (maybe after retries); dead_lettered, retry_topic, skipped: as the
    # failure policy decided; stalled: nowhere to go, retried until the client closes;
    # awaiting_ack: a manual-ack handler returned without acking (or nacking) it; rejected
    # (queue mode): retries spent, or a fatal error, with no DLQ: the share group archives it.
    outcome: Outcome
    # Handler calls, retries included (in queue mode: deliveries).
    attempts: int
    # The errors of the failed calls, in order.
    errors: list[BaseException] = field(default_factory=list)
    # What the app produced while handling it: outputs, DLQ and retry-topic records.
    records: list[ProducedRecord] = field(default_factory=list)


class TestClient:
    """Runs `app`'s handlers in this process. `settings` overrides the app's own settings
    (key by key); `partitions` is how many partitions each topic has; `timeout` bounds, in
    real seconds, how long one send may take to settle; `delivery_limit` is the share
    group's delivery count limit for queue-mode handlers."""

    __test__ = False  # a pytest collection hint: not a test class

    def __init__(
        self,
        app: App,
        *,
        settings: Mapping[str, Any] | None = None,
        partitions: int = 1,
        timeout: float = 10.0,
        delivery_limit: int = 5,
    ) -> None:
        self.app = app
        base = app.settings if app.settings is not None else Settings.model_validate({})
        # A send returns once its message is settled, so at close nothing is in flight but
        # what never settles (stalled, left unacked): no reason to wait long for it.
        base = settings_for_run(base, None, {"shutdown_timeout": 1.0, "revoke_timeout": 1.0})
        self.settings = settings_for_run(base, None, settings or {})
        self.specs = resolve_specs(app, self.settings)
        # Real time, plus every wait the runtime skipped (a backoff, a breaker's cooldown).
        self.clock = VirtualClock()
        self.producer = MemoryProducer()
        self.broker = MemoryBroker()
        self._partitions = partitions
        self._timeout = timeout
        self._delivery_limit = delivery_limit
        self._sources: dict[str, MemorySource | MemoryShareSource] = {}
        self._runtimes: dict[str, HandlerRuntime] = {}
        self._observed: dict[str, _Observer] = {}
        self._stack = contextlib.ExitStack()
        self._send_lock = threading.Lock()

    # -- lifecycle ----------------------------------------------------------------------------

    def __enter__(self) -> TestClient:
        with contextlib.ExitStack() as stack:  # left at once if the start fails
            self._start(stack)
            self._stack = stack.pop_all()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stack.close()

    def _start(self, stack: contextlib.ExitStack) -> None:
        sources = _MemorySources(self.broker, self._sources, self._delivery_limit, self.app.name)
        for spec in self.specs:
            for topic in self._subscribed(spec):
                if not self.broker.partitions(topic):
                    self.broker.create_topic(topic, self._partitions)
        runtime = stack.enter_context(
            AppRuntime(
                self.app,
                self.settings,
                self.specs,
                sources=sources,
                producer=self.producer,
                clock=self.clock,
                transactions=self._transactions,
            )
        )
        for handler in runtime.handlers:
            spec = handler.spec
            observer = _Observer(self.broker.cond, queue=spec.mode == "queue")
            handler.attempts.observers.append(observer)
            self._runtimes[spec.name] = handler
            self._observed[spec.name] = observer
        runtime.start()

    def _transactions(
        self, app_name: str, spec: HandlerSpec, settings: Settings
    ) -> MemoryTransactions:
        """An exactly_once handler's transactional producer: its committed records join
        `records()`, its offsets commit to its in-memory source."""
        source = self._sources[spec.name]
        assert isinstance(source, MemorySource)
        return MemoryTransactions(self.producer, source)

    @staticmethod
    def _subscribed(spec: HandlerSpec) -> list[str]:
        routes = RetryRoutes(spec.topics, spec.retry_topics)
        return [*spec.topics, *(stage.topic for stage in routes.stages)]

    # -- sending --------------------------------------------------------------------------------

    def send(
        self,
        topic: str,
        value: Any = None,
        *,
        key: bytes | str | None = None,
        headers: Sequence[tuple[str, bytes | None]] | None = None,
        raw_value: bytes | None = None,
        handler: str | None = None,
    ) -> Delivery:
        """Deliver one message to the handler consuming `topic` and return what happened.
        `value` is encoded with that handler's codec; `raw_value` goes as it is (say, bytes
        that do not decode). With several handlers on the topic, name one (`handler`).

        It returns once the message itself is settled (finished, dead-lettered, stalled,
        left unacked...), whatever happened to the messages sent before it: one left unacked
        or stalled holds its partition's commit back, not the later sends. While the handler's
        circuit breaker is open, virtual time jumps to the end of its cooldown (see above)."""
        spec = self._consumer_of(topic, handler)
        if raw_value is None and value is not None:
            runtime = self._runtimes[spec.name]
            raw_value = runtime.codec.encode(value)
        return self._deliver(spec, topic, raw_value, key, headers)

    def send_record(
        self, record: ProducedRecord, *, topic: str | None = None, handler: str | None = None
    ) -> Delivery:
        """Feed a produced record back (to its own topic, or `topic`): a retry-topic record
        runs once its due time has come, which the virtual clock jumps to."""
        topic = topic or record.topic
        spec = self._consumer_of(topic, handler)
        due = int_header(record, kw_headers.RETRY_DUE)
        if due is not None:
            ahead = due / 1000 - self.clock.time()
            if ahead > 0:
                self.clock.advance(ahead)
        return self._deliver(spec, topic, record.value, record.key, record.headers)

    def records(self, topic: str | None = None) -> list[ProducedRecord]:
        """What the app produced (outputs, DLQ and retry-topic records), in order."""
        return [r for r in self.producer if topic is None or r.topic == topic]

    def _consumer_of(self, topic: str, handler: str | None) -> HandlerSpec:
        consumers = [s for s in self.specs if topic in self._subscribed(s)]
        if handler is not None:
            consumers = [s for s in consumers if s.name == handler]
        if not consumers:
            known = ", ".join(f"{s.name} ({', '.join(s.topics)})" for s in self.specs)
            raise ConfigError(
                f"no handler of app {self.app.name!r} consumes {topic!r}"
                f"{f' as {handler!r}' if handler else ''}: its handlers are {known}"
            )
        if len(consumers) > 1:
            names = ", ".join(s.name for s in consumers)
            raise ConfigError(
                f"topic {topic!r} is consumed by handlers {names}: pass handler=... to send "
                "to one of them"
            )
        return consumers[0]

    def _deliver(
        self,
        spec: HandlerSpec,
        topic: str,
        value: bytes | None,
        key: bytes | str | None,
        headers: Sequence[tuple[str, bytes | None]] | None,
    ) -> Delivery:
        with self._send_lock:
            produced_before = len(self.producer.records)
            raw_key = key.encode() if isinstance(key, str) else key
            record = self.broker.append(topic, value, key=raw_key, headers=headers)
            where = Partition(topic, record.partition())  # type: ignore[arg-type]
            offset: int = record.offset()  # type: ignore[assignment]
            source = self._sources[spec.name]
            runtime = self._runtimes[spec.name]
            breaker = runtime.breaker
            observer = self._observed[spec.name]
            observer.watch(where, offset)
            deadline = time.monotonic() + self._timeout
            settled = False
            while not settled:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"message {topic}[{where.partition}]@{offset} was not settled by "
                        f"handler {spec.name!r} within {self._timeout:g}s (a handler waiting "
                        "on something?)"
                    )
                if breaker is not None and breaker.open:
                    # The partitions stay paused until the cooldown is over, and nothing
                    # else moves virtual time while no message is held. A millisecond past
                    # it: float rounding must not leave the clock a hair short.
                    ahead = breaker.closes_in()
                    if ahead > 0:
                        self.clock.advance(ahead + 0.001)
                settled = source.wait_for(lambda _: observer.settled, min(remaining, 0.05))
                if runtime.error is not None:
                    raise runtime.error
            errors, decisions, stopped, completed = observer.take()
            if spec.processing_guarantee == "exactly_once" and stopped is None:
                # Its records are visible once the transaction that commits its offset has
                # (within transaction_interval, virtual time included).
                source.wait_for(
                    lambda s: isinstance(s, MemorySource) and s.committed.get(where, 0) > offset,
                    max(0.0, deadline - time.monotonic()),
                )
        outcome: Outcome
        if stopped == "awaiting_ack" and completed is not None:
            stopped = None  # acked after all (by another thread, as the handler returned)
        if stopped is not None:
            outcome = stopped
        elif completed is Reported.REJECTED:
            outcome = "rejected"
        elif decisions and decisions[-1].action in _FINAL:
            outcome = _FINAL[decisions[-1].action]  # type: ignore[assignment]
        else:
            outcome = "finished"
        # Every failed call was observed; a finished message had one more, the one that worked.
        calls = len(errors) + (1 if outcome in ("finished", "awaiting_ack") else 0)
        return Delivery(
            handler=spec.name,
            topic=topic,
            partition=where.partition,
            offset=offset,
            outcome=outcome,
            attempts=calls,
            errors=errors,
            records=self.producer.records[produced_before:],
        )


class _Observer:
    """The failures and decisions of the message a send is waiting for, and whether it is
    settled: reported finished or dead-lettered by the executor (or its ack), or stopped
    where no report follows (a stall, a manual-ack handler that returned without acking).
    It wakes the send's wait (on the broker's condition) when it is."""

    def __init__(self, wake: threading.Condition, *, queue: bool = False) -> None:
        self._wake = wake
        # Queue mode: a failed delivery is RELEASEd (reported, not settled: it comes again),
        # and where stream mode would stall, the record is REJECTed (reported, settled).
        self._queue = queue
        self._lock = threading.Lock()
        self._watched: tuple[Partition, int] | None = None
        self._errors: list[BaseException] = []
        self._decisions: list[Decision] = []
        self._stopped: Outcome | None = None
        self._completed: Reported | None = None  # the reported outcome that settled it

    @property
    def settled(self) -> bool:
        return self._completed is not None or self._stopped is not None

    def watch(self, partition: Partition, offset: int) -> None:
        with self._lock:
            self._watched = (partition, offset)
            self._errors, self._decisions, self._stopped = [], [], None
            self._completed = None

    def take(
        self,
    ) -> tuple[list[BaseException], list[Decision], Outcome | None, Reported | None]:
        with self._lock:
            self._watched = None
            return self._errors, self._decisions, self._stopped, self._completed

    def _is_watched(self, msg: Message[Any]) -> bool:
        return self._watched == (Partition(msg.topic, msg.partition), msg.offset)

    def failed(self, msg: Message[Any], error: BaseException, decision: Decision) -> None:
        with self._lock:
            if not self._is_watched(msg) or self._stopped is not None:
                return
            self._errors.append(error)
            self._decisions.append(decision)
            if decision.action is not Action.STALL or self._queue:
                return
            self._stopped = "stalled"
        self._notify()

    def awaiting_ack(self, msg: Message[Any]) -> None:
        with self._lock:
            if not self._is_watched(msg) or self._stopped is not None:
                return
            self._stopped = "awaiting_ack"
        self._notify()

    def reported(self, completions: list[Completion]) -> None:
        with self._lock:
            if self._watched is None or self._completed is not None:
                return
            partition, offset = self._watched
            # Not finished is no settlement: the message was given up (a bug of the
            # runtime's, logged), never redelivered here; the send times out. Released
            # (queue mode) is none either: it is delivered again.
            settled = next(
                (
                    outcome
                    for lease, offsets, outcome in completions
                    if outcome not in _UNSETTLED
                    and lease.partition == partition
                    and offset in offsets
                ),
                None,
            )
            if settled is None:
                return
            self._completed = settled
        self._notify()

    def _notify(self) -> None:
        with self._wake:
            self._wake.notify_all()


@dataclass
class _MemorySources:
    """The test client's sources: a member of an in-memory consumer group or share group per
    handler, over its MemoryBroker; kept by handler name in `by_handler`."""

    broker: MemoryBroker
    by_handler: dict[str, MemorySource | MemoryShareSource]
    delivery_limit: int
    app: str

    def stream(self, spec: HandlerSpec) -> Source:
        source = self.by_handler[spec.name] = MemorySource(broker=self.broker)
        return source

    def queue(self, spec: HandlerSpec) -> tuple[ShareSource, ShareGroupConfig]:
        source = MemoryShareSource(
            broker=self.broker, delivery_limit=self.delivery_limit, group=spec.group or self.app
        )
        self.by_handler[spec.name] = source
        return source, source.config

"""FleetReporter: a worker process's part of the fleet, on one thread of its own.

Every `fleet.interval` it writes the process's report (fleet/report.py) to the reports topic,
keyed by the process's id, and the failures seen since the last one to the errors topic (at
most ERRORS_PER_REPORT a report: a flood of failures is counted, not copied). With
`fleet.control` it also reads the commands topic, every command from the start (they add up
to a state: fleet/commands.py), and carries them out here (fleet/control.py).

One thread ("kw-fleet") owns the producer and the commands consumer; `__exit__` stops it,
and its last act is a final report saying "stopped", so the dashboard shows a clean shutdown
at once (a killed process is shown gone after three missed reports).

Cost: the report is built from ProcessStatus and the registry's totals once an interval;
nothing is added to the message path.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import confluent_kafka
import orjson
import structlog
from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition
from prometheus_client import CollectorRegistry

from kafkaworker import clients
from kafkaworker.fleet import report
from kafkaworker.fleet.commands import MAX_SKEW, verify
from kafkaworker.fleet.control import FleetControl
from kafkaworker.fleet.topics import COMMANDS, ERRORS, REPORTS, ensure, fleet_topics
from kafkaworker.observability.dashboard import totals
from kafkaworker.ops import KafkaAdmin
from kafkaworker.owned_thread import OwnedThread
from kafkaworker.producer import producer_config
from kafkaworker.settings import Settings
from kafkaworker.version import VERSION

if TYPE_CHECKING:
    from kafkaworker.runtime.status import ProcessStatus

log = structlog.get_logger("kafkaworker.fleet")

ERRORS_PER_REPORT = 20
# How often the fleet thread looks at the commands (and reconciles), at least.
TICK = 1.0
# How long the final report may take to be acknowledged at shutdown.
FINAL_FLUSH = 5.0
_APPEND_TIME = 2  # confluent_kafka.TIMESTAMP_LOG_APPEND_TIME


class FleetReporter:
    def __init__(
        self,
        settings: Settings,
        status: ProcessStatus,
        registry: CollectorRegistry,
        *,
        stop: Callable[[], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.identity = report.Identity.of_this_process(status.app)
        self._status = status
        self._registry = registry
        self._clock = clock
        self._topics = fleet_topics(settings.fleet)
        self._interval = settings.fleet.interval
        self.control = FleetControl(self.identity, status, stop) if settings.fleet.control else None
        if self.control is not None:
            status.holding = self.control.held_at_assignment
        self._token = (
            settings.dashboard.token.get_secret_value() if settings.dashboard.token else ""
        )
        self._producer: confluent_kafka.Producer | None = None
        self._consumer: confluent_kafka.Consumer | None = None
        self._commands_end: dict[int, int] = {}  # not empty until caught up at start
        self._previous: report.Sample | None = None
        self._last_failure: dict[str, Any] | None = None  # the newest one written
        self._errors_dropped = 0
        self.reports_sent = 0
        self.bytes_sent = 0  # report values, for the cost figure
        self._thread = OwnedThread(self._run, "kw-fleet")

    # -- lifecycle (the Runner's) ---------------------------------------------------------

    def __enter__(self) -> FleetReporter:
        needs = [(REPORTS, "WRITE"), (ERRORS, "WRITE")]
        if self.control is not None:
            needs.append((COMMANDS, "READ"))
        with KafkaAdmin(self.settings) as admin:
            ensure(admin, self.settings, needs)
        config = producer_config(self.settings)
        config["client.id"] = "kafkaworker.fleet"
        # A report written twice by a producer retry changes nothing (the latest wins); without
        # idempotence no producer id is asked for (a fresh cluster's coordinator answers that
        # late, with a warning each time).
        config["enable.idempotence"] = False
        # A report is JSON that repeats its field names: lz4 takes it to about a third.
        config.setdefault("compression.type", "lz4")
        self._producer = confluent_kafka.Producer(config)
        if self.control is not None:
            self._consumer = self._commands_consumer()
        self._thread.start()
        log.info(
            "fleet reports on",
            topic=self._topics[REPORTS].name,
            process=self.identity.id,
            interval=self._interval,
            control=self.control is not None,
        )
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._thread.stop(FINAL_FLUSH + 5)

    def _commands_consumer(self) -> confluent_kafka.Consumer:
        """Every partition of the commands topic, from the start, in no group (every process
        reads every command, and commits nothing)."""
        topic = self._topics[COMMANDS].name
        consumer = confluent_kafka.Consumer(
            {
                **clients.connection_config(self.settings),
                "group.id": f"kafkaworker.fleet.{self.identity.id}",  # never joined
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
            }
        )
        metadata = clients.metadata(consumer, self.settings)
        partitions = sorted(metadata.topics[topic].partitions)
        for p in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high > low:
                self._commands_end[p] = high
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        return consumer

    # -- the thread ----------------------------------------------------------------------

    def _run(self) -> None:
        next_report = self._clock()
        try:
            while not self._thread.stopping.is_set():
                try:
                    next_report = self._turn(next_report)
                except Exception:  # the worker must not care: logged, tried again
                    log.exception("fleet report or command failed")
                    next_report = self._clock() + self._interval
                    self._thread.stopping.wait(TICK)
        finally:
            self._finish()

    def _turn(self, next_report: float) -> float:
        """Read commands (or wait) until the next report is due, then send it; when the one
        after is due."""
        now = self._clock()
        status: dict[str, Any] | None = None
        if self.control is not None:
            status = self._read_commands(max(0.0, min(TICK, next_report - now)))
        else:
            self._thread.stopping.wait(max(0.0, next_report - now))
        now = self._clock()
        if now >= next_report:
            self._publish(status or self._status.status(), now)
            # On schedule, not drifting by the time a report takes; a late one (a stalled
            # machine) is not followed by a burst of catching up.
            next_report = max(next_report + self._interval, now + self._interval / 2)
        assert self._producer is not None
        self._producer.poll(0)
        return next_report

    def _read_commands(self, timeout: float) -> dict[str, Any] | None:
        """Read what commands arrived (waiting up to `timeout`) and carry them out; the status
        used for that, if any."""
        assert self._consumer is not None and self.control is not None
        status = None
        for record in self._consumer.consume(100, timeout):
            error = record.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    log.warning("reading fleet commands", error=error.str())
                continue
            command = self._verified(record)
            caught_up = self._caught_up(record)
            if command is not None:
                if caught_up and status is None:
                    status = self._status.status()
                self.control.receive(command, status if caught_up else None)
        if not self._commands_end:
            status = status or self._status.status()
            self.control.reconcile(status)
        return status

    def _caught_up(self, record: confluent_kafka.Message) -> bool:
        """Whether every command up to the topic's end at start-up is read (`record` being the
        latest): only then is the state they add up to carried out."""
        partition, offset = record.partition() or 0, record.offset() or 0
        end = self._commands_end.get(partition)
        if end is not None and offset + 1 >= end:
            del self._commands_end[partition]
        return not self._commands_end

    def _verified(self, record: confluent_kafka.Message) -> Any:
        value = record.value()
        try:
            command = verify(value or b"", self._token)
        except (ValueError, KeyError, TypeError, orjson.JSONDecodeError) as exc:
            log.warning("fleet command ignored", offset=record.offset(), reason=str(exc))
            return None
        kind, millis = record.timestamp()
        if kind == _APPEND_TIME and abs(millis / 1000 - command.issued_at) > MAX_SKEW:
            log.warning(
                "fleet command ignored: written long after it was issued (written again?)",
                command=command.describe(),
                issued_at=command.issued_at,
                written=millis / 1000,
            )
            return None
        return command

    def _publish(self, status: dict[str, Any], now: float, state: str | None = None) -> None:
        assert self._producer is not None
        self._send_failures(status)
        counters = totals(self._registry)
        extra: dict[str, Any] = {"errors_dropped": self._errors_dropped}
        if self.control is not None:
            extra["quiet"] = self.control.standing.quiet(self.identity.id)
            extra["commands"] = list(self.control.acknowledged)
        value = orjson.dumps(
            report.build(
                self.identity,
                status,
                counters,
                now=now,
                interval=self._interval,
                version=VERSION,
                previous=self._previous,
                state=state,
                extra=extra,
            )
        )
        self._previous = report.Sample(now, counters)
        self._produce(REPORTS, value)
        self.reports_sent += 1
        self.bytes_sent += len(value)

    def _send_failures(self, status: dict[str, Any]) -> None:
        """The failures since the last report (RecentFailures keeps the last 100, oldest
        first; the newest one written is found by identity, so none is written twice)."""
        entries = status.get("failures", [])
        new = entries
        for at in range(len(entries) - 1, -1, -1):
            if entries[at] is self._last_failure:
                new = entries[at + 1 :]
                break
        if not new:
            return
        self._last_failure = new[-1]
        if len(new) > ERRORS_PER_REPORT:
            self._errors_dropped += len(new) - ERRORS_PER_REPORT
            new = new[-ERRORS_PER_REPORT:]
        where = {"app": self.identity.app, "host": self.identity.host, "process": self.identity.id}
        for entry in new:
            self._produce(ERRORS, orjson.dumps({**entry, **where}))

    def _produce(self, role: str, value: bytes) -> None:
        assert self._producer is not None
        try:
            self._producer.produce(self._topics[role].name, value, key=self.identity.id)
        except BufferError:  # the brokers are away and the queue is full: skip this one
            log.warning("fleet report dropped: the producer's queue is full", topic=role)

    def _finish(self) -> None:
        """The final report ("stopped"), then the clients go."""
        try:
            if self._producer is not None:
                self._publish(self._status.status(), self._clock(), state="stopped")
                left = self._producer.flush(FINAL_FLUSH)
                if left:
                    log.warning("the final fleet report was not acknowledged", records=left)
        except Exception:
            log.exception("the final fleet report failed")
        finally:
            if self._consumer is not None:
                self._consumer.close()

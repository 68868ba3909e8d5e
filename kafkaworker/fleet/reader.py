"""FleetReader: the dashboard's consumer of the fleet's topics, feeding a FleetView.

One consumer, in no consumer group (it assigns partitions and commits nothing: any number of
dashboards read the same topics), on one thread ("kw-fleet-reader") that owns it and closes
it in close(). It reads:
- the reports topic from the start (compaction keeps each process's latest report; a dashboard
  started now shows the processes that stopped or died within `fleet.retention`);
- the errors and audit topics' last TAIL records per partition (older ones are history);
- the commands topic from the start, when the dashboard has control (the fleet pauses in
  force are what the commands add up to, fleet/commands.py).
`caught_up` is set once the reports topic was read up to its end as of start-up: the
dashboard's /readyz.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import confluent_kafka
import orjson
import structlog
from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from kafkaworker import clients
from kafkaworker.fleet.commands import verify
from kafkaworker.fleet.topics import AUDIT, COMMANDS, ERRORS, REPORTS, fleet_topics
from kafkaworker.fleet.view import FleetView
from kafkaworker.owned_thread import OwnedThread
from kafkaworker.settings import Settings

log = structlog.get_logger("kafkaworker.fleet")

TAIL = 500


class FleetReader:
    def __init__(
        self,
        settings: Settings,
        view: FleetView,
        *,
        token: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._view = view
        self._token = token
        self._clock = clock
        topics = fleet_topics(settings.fleet)
        self._roles = {topics[role].name: role for role in (REPORTS, ERRORS, AUDIT)}
        if token:
            self._roles[topics[COMMANDS].name] = COMMANDS
        self._consumer: confluent_kafka.Consumer | None = None
        self._reports_end: dict[int, int] = {}
        self.caught_up = threading.Event()
        self._thread = OwnedThread(self._run, "kw-fleet-reader")

    def start(self) -> FleetReader:
        consumer = confluent_kafka.Consumer(
            {
                **clients.connection_config(self._settings),
                "group.id": "kafkaworker.dashboard",  # never joined: assign()
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
            }
        )
        metadata = clients.metadata(consumer, self._settings)
        assignment = []
        for topic, role in self._roles.items():
            for p in sorted(metadata.topics[topic].partitions):
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                start = OFFSET_BEGINNING if role in (REPORTS, COMMANDS) else max(low, high - TAIL)
                if role == REPORTS and high > low:
                    self._reports_end[p] = high
                assignment.append(TopicPartition(topic, p, start))
        consumer.assign(assignment)
        self._consumer = consumer
        if not self._reports_end:
            self.caught_up.set()
        self._thread.start()
        return self

    def close(self) -> None:
        self._thread.stop()
        if self._consumer is not None:
            self._consumer.close()

    def _run(self) -> None:
        assert self._consumer is not None
        while not self._thread.stopping.is_set():
            try:
                for record in self._consumer.consume(500, 0.5):
                    if record.error() is None:
                        self._add(record)
                if self._reports_end:
                    self._check_caught_up()
            except Exception:  # one bad record must not stop the page
                log.exception("reading the fleet's topics")
                self._thread.stopping.wait(1.0)

    def _add(self, record: confluent_kafka.Message) -> None:
        role = self._roles.get(record.topic() or "")
        value = record.value()
        if role == REPORTS:
            key = record.key()
            if value is None:
                if key is not None:
                    self._view.forget(key.decode("utf-8", "replace"))
                return
            _, millis = record.timestamp()
            seen = millis / 1000 if millis > 0 else self._clock()
            self._view.add_report(orjson.loads(value), seen)
        elif value is None:
            return
        elif role == ERRORS:
            self._view.add_failure(orjson.loads(value))
        elif role == AUDIT:
            self._view.add_audit(orjson.loads(value))
        elif role == COMMANDS and self._token:
            try:
                self._view.add_command(verify(value, self._token))
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("fleet command not shown", offset=record.offset(), reason=str(exc))

    def _check_caught_up(self) -> None:
        """By position, not by record: the last offsets may hold no record any more."""
        assert self._consumer is not None
        topic = next(t for t, role in self._roles.items() if role == REPORTS)
        wanted = [TopicPartition(topic, p) for p in self._reports_end]
        for tp in self._consumer.position(wanted):
            if tp.offset >= self._reports_end[tp.partition]:
                del self._reports_end[tp.partition]
        if not self._reports_end:
            self.caught_up.set()

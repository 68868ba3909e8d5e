"""A consumer group as a Source: confluent-kafka's Consumer, and the configuration it runs with."""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from kafkaworker import clients
from kafkaworker.errors import StartupError
from kafkaworker.handlers import HandlerSpec
from kafkaworker.runtime.source import (
    REBALANCING,
    AssignmentListener,
    OffsetAndMetadata,
    Partition,
    Record,
)
from kafkaworker.settings import Settings

log = structlog.get_logger("kafkaworker.source")


def consumer_config(app_name: str, spec: HandlerSpec, settings: Settings) -> dict[str, Any]:
    """librdkafka configuration for a handler's consumer; raw `kafka.consumer` keys win."""
    config: dict[str, Any] = {
        **clients.base_config(settings),
        "group.id": spec.group or app_name,
        "client.id": f"{app_name}.{spec.name}",
        # At-least-once: the poll thread commits positions below which every message is
        # finished, never what librdkafka merely handed out, with the offset map of what is
        # finished above them in the metadata (poll/poller.py, OffsetCommit). Not
        # librdkafka's auto-commit of its offset store: it commits a stored offset only when
        # the offset moved, never a change of metadata alone (measured with 2.16), and the
        # map grows while a slow key holds the position.
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": settings.auto_offset_reset,
        "enable.partition.eof": False,
        # When the local queue is full librdkafka waits this long before fetching the
        # partition again; its 1000 ms capped a backlog drain at about 150k records/s here
        # (the raw loop did 1.1M with 10 ms). The queue stays bounded by queued.max.messages.*.
        "fetch.queue.backoff.ms": 10,
    }
    raw = settings.kafka.consumer
    kip848 = settings.kafka.group_protocol == "consumer" or raw.get("group.protocol") == "consumer"
    if settings.kafka.group_instance_id:
        config["group.instance.id"] = group_instance_id(settings.kafka.group_instance_id, spec)
    # librdkafka's statistics every second (parsed on the poll thread, ~20 KB of JSON): how
    # long the brokers have owed an answer (health), and under KIP-848 the group state
    # (readiness: no assign callback comes for a member given no partitions).
    config["statistics.interval.ms"] = 1000
    if kip848:
        config["group.protocol"] = "consumer"  # KIP-848: assignment is the broker's job
    else:
        config["partition.assignment.strategy"] = "cooperative-sticky"
        # Members learn of a rebalance from a heartbeat, and cooperative rebalancing takes two
        # rounds: at librdkafka's 3 s a new member waited 2.5-5.5 s for partitions, at 1 s
        # 1.5 s (measured here). Scaling out should take effect that fast; the cost is one
        # small request a second per member. (KIP-848: the broker sets the interval.)
        config["heartbeat.interval.ms"] = 1000
    config.update(raw)
    if spec.processing_guarantee == "exactly_once":
        # Offsets commit inside the handler's transactions (send_offsets_to_transaction), never
        # on their own; and an aborted transaction's records must never be handled
        # (read_committed is librdkafka's default: said here so that nothing overrides it;
        # the settings that would are refused at load, handlers.check_exactly_once_settings).
        config["enable.auto.commit"] = False
        config["isolation.level"] = "read_committed"
    return config


def group_instance_id(name: str, spec: HandlerSpec) -> str:
    """A handler's consumer's static member name: unique per handler (two handlers may share
    a group) and per process of `--processes N`, whose supervisor numbers its children.
    Members of one group under one name fence each other (FENCED_INSTANCE_ID)."""
    index = os.environ.get("KAFKAWORKER_PROCESS_INDEX")
    return f"{name}.{spec.name}" + (f"-{index}" if index else "")


def new_consumer(config: dict[str, Any]) -> Consumer:
    try:
        return Consumer(config)
    except (KafkaException, ValueError, TypeError) as exc:
        raise StartupError(f"the consumer configuration was rejected: {_reason(exc)}") from None


def _reason(exc: Exception) -> str:
    if isinstance(exc, KafkaException) and isinstance(exc.args[0], KafkaError):
        return str(exc.args[0].str())
    return " ".join(str(exc).split())


def _topic_partitions(partitions: Sequence[Partition]) -> list[TopicPartition]:
    return [TopicPartition(topic, partition) for topic, partition in partitions]


def _offsets(offsets: Mapping[Partition, OffsetAndMetadata]) -> list[TopicPartition]:
    return [
        TopicPartition(p.topic, p.partition, offset, metadata=metadata)
        if metadata
        else TopicPartition(p.topic, p.partition, offset)
        for p, (offset, metadata) in offsets.items()
    ]


def _partitions(topic_partitions: list[TopicPartition]) -> list[Partition]:
    return [Partition(tp.topic, tp.partition) for tp in topic_partitions]


class ConsumerGroupSource:
    """One handler's consumer; its rebalance callbacks reach the listener inside fetch()."""

    def __init__(self, config: dict[str, Any], *, handler: str, join_timeout: float = 60.0) -> None:
        self._handler = handler
        self._listener: AssignmentListener | None = None
        self._topics: list[str] = []
        # Partitions revoked or lost since fetch() took its first record (see fetch()).
        self._revoked: set[Partition] = set()
        # Asynchronous commits that failed, told by librdkafka's commit callback inside poll().
        self._failed: list[tuple[Partition, int]] = []
        # Commits the coordinator acknowledged, told by the same callback.
        self._acknowledged: list[tuple[Partition, int]] = []
        self._synchronous = False  # inside a synchronous commit (revoke, shutdown, starts)
        config = dict(config)
        self._group_protocol = config.get("group.protocol", "classic")
        config["on_commit"] = self._on_commit  # librdkafka's periodic commits report here
        self._kip848 = config.get("group.protocol") == "consumer"
        # librdkafka refuses to mix cooperative and eager strategies: one names the protocol.
        self._cooperative = self._kip848 or "cooperative" in str(
            config.get("partition.assignment.strategy", "")
        )
        self._silence = 0.0
        self._config = config
        # The join watchdog (see Settings.join_timeout): since when the member has been out
        # of its group while the coordinator's connection was up; set when it is time to
        # start a fresh consumer, which fetch() does.
        self._join_timeout = join_timeout
        self._out_since: float | None = None
        self._stuck_for = 0.0
        self._stuck_state = ""
        self._failed_at: float | None = None  # when the consumer failed (a fatal error)
        self._generation = 0
        self._consumer = self._new_consumer()

    def _new_consumer(self) -> Consumer:
        self._generation += 1
        # Called inside poll(): the poll thread. A replaced consumer's calls (from its close,
        # on another thread) carry an old generation and are ignored.
        stats = functools.partial(self._on_statistics, self._generation)
        return new_consumer({**self._config, "stats_cb": stats})

    def subscribe(self, topics: Sequence[str], listener: AssignmentListener) -> None:
        self._listener = listener
        self._topics = list(topics)
        self._out_since = time.monotonic()
        self._subscribe()

    def _subscribe(self) -> None:
        self._consumer.subscribe(
            self._topics,
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )

    def fetch(self, timeout: float, max_records: int) -> list[Record]:
        failed = self._failed_at is not None and time.monotonic() - self._failed_at > _FATAL_RETRY
        if self._stuck_for or failed:
            self._rejoin()
        # poll() returns as soon as one record is there; consume(n, 0) then takes what is
        # already fetched without waiting (consume(n, t) would wait t for a full batch: up to
        # t of added latency at low rates).
        first = self._consumer.poll(timeout)
        if first is None:
            return []
        error = first.error()
        if error is not None and error.code() == KafkaError._FATAL:
            self._fatal(error)
            return []
        if max_records <= 1:
            return [first]
        self._revoked.clear()
        rest = self._consumer.consume(max_records - 1, 0)
        # consume() may run rebalance callbacks. `first` was fetched before them: if its
        # partition was revoked (and maybe assigned again) meanwhile, it belongs to the old
        # assignment; handed to the new one, it would make the re-fetched lower offsets look
        # like repeats. Records in `rest` from before a revoke are left to the poll thread,
        # which drops records of partitions it does not own.
        if self._revoked and (first.topic(), first.partition()) in self._revoked:
            return rest
        rest.insert(0, first)
        return rest

    def _fatal(self, error: KafkaError) -> None:
        """A fatal error: this consumer is unusable. It is replaced _FATAL_RETRY later. The
        one seen here: a static member started again under KIP-848 while the broker still
        holds its name for the killed one (UNRELEASED_INSTANCE_ID, until that one's session
        times out: KIP-848 frees a static name only when its member leaves), which librdkafka
        treats as fatal."""
        if self._failed_at is None:
            log.error(
                "the consumer failed and is replaced with a fresh one in a few seconds",
                handler=self._handler,
                error=error.str(),
                retry_seconds=_FATAL_RETRY,
            )
            self._failed_at = time.monotonic()

    def _rejoin(self) -> None:
        """Replace a consumer stuck out of its group, or failed, with a fresh one. What the
        old one still held is lost (another member may own it by now): the listener drops its
        work and commits nothing. The old consumer is closed on a thread of its own, which
        ends when its close() returns: a stuck consumer's close can wait for the very requests
        that are stuck, and the poll thread must not."""
        assert self._listener is not None
        old = self._consumer
        if self._stuck_for:
            log.warning(
                "the consumer has been out of its group for longer than join_timeout; "
                "closing it and joining with a fresh one (a librdkafka join stall, "
                "cf. librdkafka#3082; raise join_timeout if rebalances here take that long)",
                handler=self._handler,
                out_of_group_seconds=round(self._stuck_for, 1),
                group_state=self._stuck_state,
                join_timeout=self._join_timeout,
            )
        self._stuck_for = 0.0
        self._failed_at = None
        self._out_since = time.monotonic()
        try:
            held = _partitions(old.assignment())
        except KafkaException:
            held = []
        if held:
            self._revoked.update(held)
            self._listener.on_lost(held)
        self._consumer = self._new_consumer()
        self._subscribe()
        threading.Thread(
            target=_close_quietly, args=(old,), name=f"kw-{self._handler}-close", daemon=True
        ).start()

    def pause(self, partitions: Sequence[Partition]) -> None:
        self._consumer.pause(_topic_partitions(partitions))

    def resume(self, partitions: Sequence[Partition]) -> None:
        self._consumer.resume(_topic_partitions(partitions))

    def commit(
        self, offsets: Mapping[Partition, OffsetAndMetadata], *, asynchronous: bool = False
    ) -> None:
        if asynchronous:
            self._consumer.commit(offsets=_offsets(offsets), asynchronous=True)
            return
        self._commit_or_raise(self._consumer, _offsets(offsets))

    def failed_commits(self) -> list[tuple[Partition, int]]:
        failed, self._failed = self._failed, []
        return failed

    def acknowledged_commits(self) -> list[tuple[Partition, int]]:
        acknowledged, self._acknowledged = self._acknowledged, []
        return acknowledged

    def _commit_or_raise(self, consumer: Consumer, offsets: list[TopicPartition]) -> None:
        # It raises for the request; a partition's own failure is in its result. The commit
        # callback librdkafka may serve meanwhile is not the periodic commit's.
        self._synchronous = True
        try:
            results = consumer.commit(offsets=offsets, asynchronous=False)
        finally:
            self._synchronous = False
        for tp in results:
            if tp.error is not None:
                raise KafkaException(tp.error)

    # -- what exactly_once handlers' transactions need (TransactionalSource) ------------

    def group_metadata(self) -> object:
        return self._consumer.consumer_group_metadata()

    def committed_positions(
        self, partitions: Sequence[Partition], timeout: float
    ) -> dict[Partition, int]:
        found: dict[Partition, int] = {}
        deadline = time.monotonic() + timeout
        while True:
            try:
                committed = self._consumer.committed(
                    _topic_partitions(partitions), max(0.1, deadline - time.monotonic())
                )
                break
            except KafkaException as exc:
                # Right after an abort the coordinator may still hold the aborted offsets as
                # pending (KIP-447: a read_committed member's offset fetch waits for them to
                # settle, UNSTABLE_OFFSET_COMMIT, which librdkafka reports as a timeout).
                error = exc.args[0]
                retriable = isinstance(error, KafkaError) and (
                    error.retriable() or error.code() == KafkaError._TIMED_OUT
                )
                if not retriable or time.monotonic() >= deadline:
                    raise
                log.debug("committed offsets not known yet; asking again", error=str(exc))
                time.sleep(0.1)
        for tp in committed:
            if tp.error is not None:
                raise KafkaException(tp.error)
            # No committed offset (-1001) cannot happen for an assigned partition here: its
            # start is committed at assignment (_commit_starts); left to librdkafka if so.
            if tp.offset >= 0:
                found[Partition(tp.topic, tp.partition)] = tp.offset
        return found

    def seek(self, positions: Mapping[Partition, int]) -> None:
        # librdkafka's seek drops what was fetched for the partition before it (its fetch
        # version moves on), so no record of the aborted stretch is handed out again from
        # the local queue.
        for partition, offset in positions.items():
            self._consumer.seek(TopicPartition(partition.topic, partition.partition, offset))

    def log_end(self, partition: Partition) -> int | None:
        try:
            # Cached: the log end offset of the latest fetch response, no request.
            _, end = self._consumer.get_watermark_offsets(
                TopicPartition(partition.topic, partition.partition), cached=True
            )
        except KafkaException:
            return None
        return end if end >= 0 else None

    def position(self, partition: Partition) -> int | None:
        try:
            [tp] = self._consumer.position([TopicPartition(partition.topic, partition.partition)])
        except KafkaException:
            return None
        return tp.offset if tp.offset >= 0 else None

    def close(self) -> None:
        if self._out_since is None or self._consumer.assignment():
            # Joined, or holding partitions: close here, where the revoke callback runs
            # (what is finished is committed on the way out).
            self._consumer.close()
            return
        # Out of its group, nothing held: nothing to revoke or commit. A consumer stuck
        # joining blocks in close() for as long as its coordinator connection is stuck (a
        # SIGTERM during a rebalance storm waited 45 s and exited 1): closed on a thread of
        # its own, waited for a while, then left behind.
        closing = threading.Thread(
            target=_close_quietly, args=(self._consumer,), name="kw-close", daemon=True
        )
        closing.start()
        closing.join(_CLOSE_OUT_OF_GROUP)
        if closing.is_alive():
            log.warning(
                "the consumer, out of its group, did not close in time; leaving it behind",
                handler=self._handler,
                waited_seconds=_CLOSE_OUT_OF_GROUP,
            )

    # -- librdkafka's callbacks, on the poll thread inside poll()/consume()/close() --------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if consumer is not self._consumer:
            return  # a consumer replaced by _rejoin(), closing
        assert self._listener is not None
        log.debug(
            "assignment",
            handler=self._handler,
            member_id=consumer.memberid(),
            group_protocol=self._group_protocol,
            added=[f"{tp.topic}[{tp.partition}]" for tp in partitions],
            # Before this callback: an incremental (cooperative) assignment adds to it.
            held_before=[f"{tp.topic}[{tp.partition}]" for tp in consumer.assignment()],
        )
        starts = self._commit_starts(consumer, partitions)
        committed = {
            Partition(tp.topic, tp.partition): OffsetAndMetadata(tp.offset, tp.metadata or "")
            for tp in starts
            if tp.offset >= 0
        }
        self._listener.on_assign(_partitions(partitions), committed)
        # Assigned here rather than by confluent-kafka after the callback, each at the offset
        # read just now: the offset map the listener decoded is the one of the position
        # fetching starts at, and a start committed just now is started at exactly. An eager
        # strategy (range, roundrobin) hands over the whole assignment each time, and takes
        # assign().
        if self._cooperative:
            consumer.incremental_assign(starts)
        else:
            consumer.assign(starts)

    def _commit_starts(
        self, consumer: Consumer, partitions: list[TopicPartition]
    ) -> list[TopicPartition]:
        """The partitions to assign, each at its committed offset (with the commit's
        metadata) where it was read; for those the group had no committed offset for, the
        position auto.offset.reset gives them now, which is committed first.

        Without it, a member that stops before it finishes anything of such a partition leaves
        the next owner to apply auto.offset.reset again: with "latest", past the records that
        arrived meanwhile (lost; Spring Kafka's assignmentCommitOption closes the same hole).
        And a partition that never receives a record would have no committed offset at all:
        `lag` shows it as never committed, and a group's offsets never equal the log ends (the
        KIP-848 runtime test's stall in CI, whose producer had left a partition empty).
        Only a group's first assignment of a partition pays for it (two requests); on any
        failure librdkafka resolves the start itself, as it would have."""
        if not partitions:
            return partitions
        reset = _RESETS.get(str(self._config.get("auto.offset.reset", "latest")))
        try:
            read = consumer.committed(partitions, _START_TIMEOUT)
            missing = [
                TopicPartition(tp.topic, tp.partition, reset)
                for tp in read
                if tp.offset < 0 and tp.error is None and reset is not None
            ]
            # Where the read failed, librdkafka resolves the start itself.
            committed = [
                tp if tp.error is None else TopicPartition(tp.topic, tp.partition) for tp in read
            ]
            if not missing:
                return committed
            starts = {
                (tp.topic, tp.partition): tp
                for tp in consumer.offsets_for_times(missing, _START_TIMEOUT)
                if tp.error is None and tp.offset >= 0
            }
            if starts:
                self._commit_or_raise(consumer, list(starts.values()))
        except KafkaException as exc:
            log.debug(
                "could not commit the start of newly assigned partitions; librdkafka "
                "resolves it as usual",
                handler=self._handler,
                error=str(exc),
            )
            return partitions
        log.debug(
            "committed the start of partitions the group had no offset for",
            handler=self._handler,
            positions={f"{tp.topic}[{tp.partition}]": tp.offset for tp in starts.values()},
        )
        return [starts.get((tp.topic, tp.partition), tp) for tp in committed]

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._let_go(consumer, partitions, lost=False)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._let_go(consumer, partitions, lost=True)

    def _let_go(self, consumer: Consumer, partitions: list[TopicPartition], *, lost: bool) -> None:
        if consumer is not self._consumer:
            return  # a consumer replaced by _rejoin(), closing
        assert self._listener is not None
        gone = _partitions(partitions)
        self._revoked.update(gone)
        (self._listener.on_lost if lost else self._listener.on_revoke)(gone)

    def _on_statistics(self, generation: int, statistics: str) -> None:
        """How long the brokers serving this consumer have owed it an answer; and, under
        KIP-848 (which calls no assign callback for a member given no partitions), whether it
        has joined: librdkafka's group state is "up" (the coordinator found, heartbeats
        going)."""
        if generation != self._generation:
            return  # a consumer replaced by _rejoin(), closing
        stats = orjson.loads(statistics)
        brokers = stats.get("brokers") or {}
        self._silence = _silence(brokers)
        group = stats.get("cgrp") or {}
        if self._kip848 and group.get("state") == "up" and self._listener is not None:
            self._listener.on_joined()
        self._watch_join(group, brokers)

    def _watch_join(self, group: Mapping[str, Any], brokers: Mapping[str, Any]) -> None:
        if not self._topics:
            return  # not subscribed yet
        joined = group.get("state") == "up" and group.get("join_state") == "steady"
        now = time.monotonic()
        if joined:
            self._out_since = None
        elif self._out_since is None:
            self._out_since = now
        elif now - self._out_since > self._join_timeout:
            # Whatever the brokers' state: when stuck, librdkafka shows the broker's
            # connection idle ("INIT": nothing assigned, nothing to fetch) and the
            # coordinator's in TRY_CONNECT for good, its requests in the out-queue, which
            # looks like a cluster that is down. A fresh consumer during a real outage only
            # waits as the old one did (found in the hung-broker and rebalance-storm tests).
            self._stuck_for = now - self._out_since
            coordinator = brokers.get("GroupCoordinator") or {}
            self._stuck_state = (
                f"{group.get('state')}/{group.get('join_state')}, coordinator connection "
                f"{coordinator.get('state', 'none')} with {coordinator.get('outbuf_cnt', 0)} "
                "requests unsent"
            )

    def silence(self) -> float:
        return self._silence

    def _on_commit(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        """Every commit's result (the asynchronous ones are what this is for), on the poll
        thread inside poll()."""
        failed = [tp for tp in partitions if tp.error is not None]
        error = error or (failed[0].error if failed else None)
        if error is None:
            self._acknowledged.extend(
                (Partition(tp.topic, tp.partition), tp.offset) for tp in partitions
            )
            if not self._synchronous:
                log.debug(
                    "committed (periodic)",
                    handler=self._handler,
                    positions={f"{tp.topic}[{tp.partition}]": tp.offset for tp in partitions},
                    offset_maps=sum(1 for tp in partitions if tp.metadata) or None,
                )
            return
        if error.code() == KafkaError._NO_OFFSET:
            return  # nothing to commit
        self._failed.extend(
            (Partition(tp.topic, tp.partition), (tp.error or error).code())
            for tp in (failed or partitions)
        )
        # Not a delivery problem: the committer commits those partitions again at its next
        # interval, with what is finished then, and uncommitted work is delivered again, never
        # skipped. During a rebalance it is routine.
        routine = error.code() in REBALANCING
        (log.debug if routine else log.warning)(
            "commit failed; committed again at the next interval",
            handler=self._handler,
            error=error.str(),
            partitions=[f"{tp.topic}[{tp.partition}]" for tp in failed] or None,
        )


# ListOffsets' special timestamps for auto.offset.reset's values ("error" has none: left to
# librdkafka, which reports it).
_RESETS = {
    **dict.fromkeys(("earliest", "smallest", "beginning"), -2),
    **dict.fromkeys(("latest", "largest", "end"), -1),
}
# The start of newly assigned partitions is looked up and committed within this (each request).
_START_TIMEOUT = 5.0
# A consumer that failed (a fatal error) is replaced this long after: a static member whose
# name the broker still holds for a killed predecessor tries again every few seconds.
_FATAL_RETRY = 5.0
# How long close() waits for a consumer out of its group (a LeaveGroup, normally milliseconds).
_CLOSE_OUT_OF_GROUP = 10.0


def _close_quietly(consumer: Consumer) -> None:
    try:
        consumer.close()
    except Exception:  # it was replaced: its errors change nothing
        log.debug("closing a replaced consumer failed", exc_info=True)


def _silence(brokers: Mapping[str, Any]) -> float:
    """Seconds the brokers that lead this consumer's partitions have owed it an answer, from
    librdkafka's broker statistics: a connected broker with requests waiting (a fetch is
    answered within fetch.wait.max.ms when all is well) that has sent nothing for rxidle; a
    broker that is not connected, for as long as it has not been (stateage). A hung broker
    keeps its sockets open and answers nothing: only the first shows it."""
    longest = 0.0
    for broker in brokers.values():
        if broker.get("nodeid", -1) < 0 or not broker.get("toppars"):
            continue  # bootstrap entries, and brokers this consumer fetches nothing from
        if broker.get("state") != "UP":
            owed = broker.get("stateage", 0) / 1e6
        elif broker.get("waitresp_cnt", 0) > 0 and broker.get("rxidle", -1) >= 0:
            owed = broker["rxidle"] / 1e6
        else:
            owed = 0.0
        longest = max(longest, owed)
    return longest

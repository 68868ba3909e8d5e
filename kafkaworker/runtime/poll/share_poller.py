"""The poll thread of a queue-mode handler: the ONLY thread that touches its share consumer.

Each turn either fetches (when every record of the previous fetch is acknowledged: the
client's explicit mode allows nothing else) and hands the records to the executor, or takes
back what the executor reported and acknowledges each record by its outcome:

    FINISHED -> ACCEPT      handled (or skipped on purpose)
    DEAD_LETTERED -> REJECT the DLQ record is written and acknowledged by the broker first
    REJECTED -> REJECT      retries spent, no DLQ (logged as an error by Attempts)
    RELEASED -> RELEASE     a retryable failure with deliveries left: the broker redelivers
    NOT_FINISHED -> RELEASE never started (shutdown), or given up

Acknowledgements travel with the next fetch; while a fetch is still being worked through they
are also sent every ACK_FLUSH seconds (commit_async), so that a released record reaches
another member without waiting for the slowest record of the fetch. There are no offsets to
track: the broker keeps each record's state.

A fetch can bring far more than the fetch size asked (max.poll.records): the broker acquires
whole record batches (its batch_optimized mode; librdkafka 2.16 cannot ask for record_limit,
KIP-1206, nor does group config share.partition.max.record.locks cap one acquisition), so a
backlog produced in large batches went whole to the first member that fetched: 6,000 records,
three members, one handled all 6,000. The surplus of a fetch, records at their first delivery
beyond the fetch size, is shared out: the poller works through it as its workers free up, and
whatever its workers would not start within SHARE_HORIZON it RELEASEs, a fetch size at a turn,
for the other members' fetches to acquire. Releasing it all at once did not work: the next
fetch acquired the released remainder whole again, released it again, and every release
counts a delivery (the broker counts acquisitions): 5,680 of 6,000 records reached their
fifth delivery, one from being archived unhandled. A released slice is only what another
member's one fetch takes, and a record is released unstarted at its first or second delivery
only (SHARE_MAX_DELIVERIES), never so late that fewer than two deliveries are left.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable

import structlog
from confluent_kafka import AcknowledgeType, KafkaError, KafkaException

from kafkaworker.handlers import HandlerSpec
from kafkaworker.message import DispatchedMessage
from kafkaworker.observability.metrics import Metrics
from kafkaworker.runtime.clock import SYSTEM_CLOCK, Clock
from kafkaworker.runtime.handoff import (
    Completion,
    CompletionQueue,
    Dispatched,
    Executor,
    Lease,
    Outcome,
    Run,
)
from kafkaworker.runtime.poll.poller import PollLoop
from kafkaworker.runtime.source import Partition, Record, ShareSource
from kafkaworker.runtime.source.share_group import (
    ACK_NAMES,
    LOCK_DURATION_MS,
    ShareGroupConfig,
    fetch_size,
)
from kafkaworker.serialization import Codec
from kafkaworker.settings import Settings

log = structlog.get_logger("kafkaworker.poller")

ACK_TYPES = {
    Outcome.FINISHED: AcknowledgeType.ACCEPT,
    Outcome.DEAD_LETTERED: AcknowledgeType.REJECT,
    Outcome.REJECTED: AcknowledgeType.REJECT,
    Outcome.RELEASED: AcknowledgeType.RELEASE,
    Outcome.NOT_FINISHED: AcknowledgeType.RELEASE,
}

_IDLE_POLL = 0.2  # a fetch's wait when nothing is out
_BUSY_WAIT = 0.02  # a wait for reports while a fetch is out
ACK_FLUSH = 0.1  # acknowledgements made while a fetch is out are sent at least this often
_DELIVERY_BUCKETS = 10
# Of a fetch's surplus, a member keeps what its workers start within this many seconds (by the
# handler's recent time per record), at least a fetch size; it releases the rest, at SHARE_PEERS
# times its own workers' pace. Released faster, released records piled up and the next member
# to fetch took them all at once (kept: at their second delivery they are not released again):
# 6,000 records over three members went 880 / 2,304 / 2,816; slower, the others wait.
SHARE_HORIZON = 1.0
SHARE_PEERS = 2
# A record at its first or second delivery may be shared out. Not only the first: a member
# killed while sharing out a backlog hands back everything it held at once (the broker ends
# its share session), the next fetch acquires it whole, and that member, keeping it all,
# worked alone for 14 s of a 15 s lock while another sat idle.
SHARE_MAX_DELIVERIES = 2
_RELEASE_TIMEOUT = 5.0


class SharePoller(PollLoop):
    """Drives one share consumer for one handler; owns it and its stop path."""

    _source: ShareSource

    def __init__(
        self,
        spec: HandlerSpec,
        settings: Settings,
        source: ShareSource,
        executor: Executor,
        completions: CompletionQueue,
        *,
        codec: Codec,
        group: ShareGroupConfig,
        metrics: Metrics | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._codec = codec
        self._group = group
        # No per-partition lag in its gauges: a share group's state is the broker's.
        super().__init__(
            spec, settings, source, executor, completions, metrics=metrics, clock=clock
        )
        # A lease per partition records came from: what the executor's lanes and reports are
        # keyed by; revoked only at shutdown (a share group has no assignment to revoke).
        self._leases_by_partition: dict[Partition, Lease] = {}
        # Records of the current fetch not acknowledged yet: (lease, offset).
        self._outstanding_records: set[tuple[Lease, int]] = set()
        self._fetch_size = fetch_size(spec, settings)
        # A fetch's surplus: first deliveries beyond the fetch size, acquired and not started
        # (handed to the executor as room frees, or released to the group).
        self._surplus: deque[Dispatched] = deque()
        self.shared_out = 0  # surplus records released to the group, for tests
        # The deliveries up to which a record may be released unstarted: twice at most, and
        # never so late that fewer than two deliveries are left (a release at the limit would
        # archive it unhandled).
        self._share_max = min(SHARE_MAX_DELIVERIES, group.delivery_limit - 2)
        self._allowance = 0.0  # surplus records that may be released now
        self._shared_at = 0.0  # when the allowance last grew (monotonic)
        self._fetched_at = 0.0
        self._lock_warned = False
        self._slow_fetch_quiet_until = 0.0
        self._acks_pending = False
        self._acks_sent_at = 0.0
        self.acknowledged: Counter[str] = Counter()  # by type, for tests
        name = spec.name
        self._ack_counters = {
            kind: self._metrics.acknowledgements.labels(name, label)
            for kind, label in ACK_NAMES.items()
        }
        self._lock_expiries = self._metrics.lock_expiries.labels(name)

    @property
    def in_flight(self) -> int:
        return len(self._outstanding_records)

    def subscribe(self) -> None:
        self._source.subscribe(list(self.spec.topics), self.on_joined)

    def on_joined(self) -> None:
        if not self._stopping.is_set():
            self._gauges.ready(True)

    # -- one turn ---------------------------------------------------------------------------

    def turn(self) -> None:
        if not self._outstanding_records:
            records = self._source.fetch(_IDLE_POLL)
            self._acks_pending = False  # the fetch carried them
            if records:
                self._dispatch(records)
        else:
            self._collect(self._drain(_BUSY_WAIT))
            if self._surplus:
                self._share_out()
            self._watch_locks()
        self._flush_acks()
        self._gauges.refresh((), len(self._outstanding_records))

    def _dispatch(self, records: list[Record]) -> None:
        by_lease: dict[Lease, list[Dispatched]] = {}
        deliveries: Counter[int] = Counter()
        codec = self._codec
        fatal: KafkaError | None = None
        outstanding = self._outstanding_records
        for record in records:
            error = record.error()
            if error is not None:
                if error.fatal():
                    fatal = error
                else:
                    log.warning("share consumer error", handler=self.spec.name, error=str(error))
                continue
            partition = Partition(record.topic(), record.partition())  # type: ignore[arg-type]
            lease = self._leases_by_partition.get(partition)
            if lease is None:
                lease = self._leases_by_partition[partition] = Lease(partition)
            offset: int = record.offset()  # type: ignore[assignment]
            [msg] = DispatchedMessage.run_of(lease, [record], [offset], codec)
            # The broker's count: deliveries of this record so far, this one included, to any
            # member. A retry is a redelivery, so this is the attempt.
            msg.attempt = count = record.delivery_count() or 1
            deliveries[min(count, _DELIVERY_BUCKETS)] += 1
            outstanding.add((lease, offset))
            if count <= self._share_max and len(outstanding) > self._fetch_size:
                self._surplus.append(msg)  # shared out turn by turn
            else:
                by_lease.setdefault(lease, []).append(msg)
        runs: list[Run] = list(by_lease.items())
        taken = len(outstanding)
        if taken:
            self._fetched_at = self._shared_at = self._clock.monotonic()
            self._allowance = 0.0
            self._lock_warned = False
            self._consumed.inc(taken)
            for count, n in deliveries.items():
                label = f"{count}+" if count == _DELIVERY_BUCKETS else str(count)
                self._metrics.deliveries.labels(self.spec.name, label).inc(n)
            self._executor.submit(runs)
        if fatal is not None:
            raise KafkaException(fatal)

    def _share_out(self) -> None:
        """Work through a fetch's surplus: hand the executor what its workers have room for,
        and release what they would not start within SHARE_HORIZON, a slice at a time, at
        SHARE_PEERS times the pace of this member's own workers."""
        surplus = self._surplus
        running = len(self._outstanding_records) - len(surplus)
        room = self._fetch_size - running
        if room > 0:
            taken = [surplus.popleft() for _ in range(min(room, len(surplus)))]
            by_lease: dict[Lease, list[Dispatched]] = {}
            for msg in taken:
                by_lease.setdefault(msg.lease, []).append(msg)
            self._executor.submit(list(by_lease.items()))
        seconds = self._executor.recent_handler_seconds
        now = self._clock.monotonic()
        elapsed, self._shared_at = now - self._shared_at, now
        if seconds <= 0:
            return  # the pace is not known before the first report
        pace = self.spec.concurrency / seconds  # this member's records per second
        self._allowance = min(self._fetch_size, self._allowance + SHARE_PEERS * pace * elapsed)
        keep = max(self._fetch_size, int(SHARE_HORIZON * pace))
        extra = min(int(self._allowance), len(surplus) - keep)
        if extra <= 0:
            return
        self._allowance -= extra
        # Acknowledged in ascending offsets, and sent on their own (commit_sync): releases
        # sent with commit_async joined the acknowledgements of the turns before in one
        # request, out of offset order, which the broker refused as a whole
        # (INVALID_REQUEST): those records came back only when their locks ran out.
        released = [surplus.pop() for _ in range(extra)][::-1]
        self._collect(Completion(m.lease, [m.offset], Outcome.NOT_FINISHED) for m in released)
        self._source.commit_sync(_RELEASE_TIMEOUT)
        self._acks_pending = False
        self._acks_sent_at = now
        self.shared_out += extra
        log.debug(
            "released part of a fetch this member would not start soon, for other members",
            handler=self.spec.name,
            released=extra,
            kept=len(surplus),
        )

    # -- reports -> acknowledgements --------------------------------------------------------

    def _collect(self, completions: Iterable[Completion]) -> None:
        counts: Counter[AcknowledgeType] = Counter()
        outstanding = self._outstanding_records
        acknowledge = self._source.acknowledge
        for lease, offsets, outcome in completions:
            kind = ACK_TYPES[outcome]
            topic, partition = lease.partition
            for offset in offsets:
                key = (lease, offset)
                if key not in outstanding:
                    continue  # given up already (shutdown released it)
                outstanding.discard(key)
                acknowledge(topic, partition, offset, kind)
                counts[kind] += 1
        if counts and not outstanding:
            self._fetch_done()
        if counts:
            self._acks_pending = True
            for kind, n in counts.items():
                self._ack_counters[kind].inc(n)
                self.acknowledged[ACK_NAMES[kind]] += n
            self._finished.inc(counts[AcknowledgeType.ACCEPT] + counts[AcknowledgeType.REJECT])
        refused = self._source.take_refused()
        if refused:
            self._lock_expiries.inc(refused)

    def _flush_acks(self) -> None:
        """While a fetch is out, send what is acknowledged every ACK_FLUSH (the next fetch
        would carry it, but only once the whole fetch is done)."""
        if not (self._acks_pending and self._outstanding_records):
            return
        now = self._clock.monotonic()
        if now - self._acks_sent_at >= ACK_FLUSH:
            self._source.commit()
            self._acks_pending = False
            self._acks_sent_at = now

    def _fetch_done(self) -> None:
        """A whole fetch is acknowledged. One that took more than half the lock is a warning
        before the locks start running out: the fetch is too large for this handler."""
        now = self._clock.monotonic()
        took = now - self._fetched_at
        if took < self._group.lock_seconds / 2 or now < self._slow_fetch_quiet_until:
            return
        self._slow_fetch_quiet_until = now + 300.0  # once every 5 minutes at most
        log.warning(
            "a fetch took more than half of the share group's acquisition lock to handle: "
            "lower kafka.share_consumer.max.poll.records (records per fetch), raise "
            f"concurrency, or raise the group config {LOCK_DURATION_MS}",
            handler=self.spec.name,
            group=self._group.group,
            fetch_seconds=round(took, 1),
            lock_seconds=self._group.lock_seconds,
        )

    def _watch_locks(self) -> None:
        """A fetch still not acknowledged when its locks run out: the broker may hand those
        records to another member meanwhile (the Python client cannot renew a lock yet)."""
        if self._lock_warned:
            return
        held = self._clock.monotonic() - self._fetched_at
        if held < self._group.lock_seconds:
            return
        self._lock_warned = True
        self._lock_expiries.inc(len(self._outstanding_records))
        log.warning(
            "records held longer than the share group's acquisition lock: the broker may "
            "deliver them again, to this member or another, while they run here; make the "
            "handler faster, lower kafka.share_consumer.max.poll.records, raise concurrency, "
            f"or raise the group config {LOCK_DURATION_MS} (group.share.record.lock."
            "duration.ms on the brokers)",
            handler=self.spec.name,
            group=self._group.group,
            unacknowledged=len(self._outstanding_records),
            held_seconds=round(held, 1),
            lock_seconds=self._group.lock_seconds,
        )

    # -- shutdown (the skeleton is PollLoop's) --------------------------------------------------

    def _leases(self) -> list[Lease]:
        return list(self._leases_by_partition.values())

    def _outstanding(self) -> int:
        return len(self._outstanding_records)

    def _stop_taking(self) -> None:
        """Release what was not started: another member takes it at once, not after its lock."""
        surplus, self._surplus = list(self._surplus), deque()
        self._collect(Completion(m.lease, [m.offset], Outcome.NOT_FINISHED) for m in surplus)
        released = len(surplus) + self._give_up_unstarted(self._leases())
        if released:
            self._source.commit()
            self._acks_pending = False
            log.info(
                "shutting down: records not started were released to the share group",
                handler=self.spec.name,
                released=released,
            )

    def _serve(self) -> None:
        self._flush_acks()

    def _left_running(self) -> dict[str, int]:
        if not self._outstanding_records:
            return {}
        running = self.in_flight
        log.warning(
            "shutdown_timeout reached with records running; they are released and will be "
            "delivered again",
            handler=self.spec.name,
            running=running,
        )
        left = list(self._outstanding_records)
        self._collect(Completion(lease, [offset], Outcome.NOT_FINISHED) for lease, offset in left)
        return {f"share group {self._group.group}": running}

    def _make_durable(self, deadline: float) -> None:
        self._source.commit_sync(max(1.0, deadline - self._clock.monotonic()))

    def _close(self) -> None:
        self._source.close()

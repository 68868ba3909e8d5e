"""TransactionalCommit: the Committer of exactly_once handlers (KIP-98, KIP-447).

Kafka Streams' exactly_once_v2 is the model: one transactional producer per consumer, fenced
by the group's generation (send_offsets_to_transaction carries the consumer's group metadata,
so a zombie whose generation is gone cannot commit), and a transaction per commit interval
(`transaction_interval`, 100 ms by default as in Streams).

What differs, and why: the handler's workers never touch the transaction. They encode a
finished message's outputs (and its DLQ or retry-topic record) and hold them (HeldWrites,
runtime/handoff.py); this poll thread alone owns the producer and, every interval, runs one
transaction from begin to commit: the held writes of the messages below each partition's
committable position, in offset order, then the positions themselves. So a transaction only
ever holds writes of messages whose offsets it commits, messages still finish out of order
with any concurrency, nothing blocks the workers while a transaction commits (Confluent
Parallel Consumer's transactional mode stops processing for it), and no transaction is open
between commits: a handler that stalls cannot outlive `transaction.timeout.ms`, and a revoke
or a shutdown only has to commit what is committable.

Errors, as librdkafka's INTRODUCTION.md ("Transactional Producer", error handling) says:
- retriable (`KafkaError.retriable()`, a timed-out commit above all): call the same API again;
- abortable (`txn_requires_abort()`: a failed delivery, a fenced generation): abort, and the
  poll thread rewinds the partitions of the aborted transaction to their committed positions
  and delivers their messages again (Poller._rewind): nothing lost, nothing doubled;
- fatal (`fatal()`: fenced, by the coordinator's epoch bump after it timed the transaction
  out, or by another process with the same transactional.id): a fresh producer and the same
  rewind, at most once a minute; a second fence within the minute means another process has
  this identity, and the handler stops with one line saying so.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import confluent_kafka
import structlog
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from kafkaworker.errors import KafkaWorkerError, StartupError
from kafkaworker.handlers import HandlerSpec
from kafkaworker.observability.metrics import Metrics
from kafkaworker.producer import ProduceError, producer_config
from kafkaworker.runtime.clock import SYSTEM_CLOCK, Clock
from kafkaworker.runtime.handoff import HeldRecord, HeldWrites, Lease
from kafkaworker.runtime.source import Partition, TransactionalSource
from kafkaworker.settings import Settings

if TYPE_CHECKING:
    from kafkaworker.runtime.poll.partitions import PartitionOffsets
    from kafkaworker.tracing.spans import TransactionSpans

log = structlog.get_logger("kafkaworker.transactions")

# A transaction's writes may come in faster than librdkafka's queue takes them: the queue is
# served this long at a time until there is room.
_QUEUE_FULL_WAIT = 0.01
# A dead member's open transaction holds read_committed readers of its outputs (the last
# stable offset) and its successor's offset fetch (KIP-447's require_stable) until the
# coordinator aborts it: Kafka Streams sets 10 s under exactly-once for that reason, instead
# of the producer's 60 s. A restarted member with the same transactional.id aborts it at once.
TRANSACTION_TIMEOUT_MS = 10_000
# Delivery errors that are a record's own (its size, its topic, the principal's rights), not
# the cluster's health: its message fails instead of the transaction being retried for good.
RECORD_ERRORS = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._UNKNOWN_TOPIC,
        KafkaError._UNKNOWN_PARTITION,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.INVALID_RECORD,
    }
)
# Fatal errors that say another producer of this transactional.id has a newer epoch: another
# process with the same identity, or the coordinator's own bump after a timeout (_renewed).
FENCES = frozenset(
    {KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH}
)
# librdkafka 2.16's send_offsets_to_transaction may block past its timeout when the group
# coordinator's broker is gone (librdkafka#5456: the coordinator request's timeout is never
# checked; #5511: a coordinator cached on a broker that left the metadata is waited for, as a
# killed KRaft broker does): seen on the 3-node cluster (tests/faults/test_cluster3.py), the
# poll thread blocked there for more than 85 s after the node coordinating the group was
# killed (2 runs of 16 went silent, stacks taken in one). The call runs on a thread of its
# own, waited for this much longer than its timeout (_bounded).
STUCK_MARGIN = 5.0
# Commit at once, whatever the interval, when this many messages' writes are held below
# committable positions (bounds what a transaction carries under load).
COMMIT_AT_HELD = 20_000


class TransactionFencedError(KafkaWorkerError):
    """The handler's transactional producer hit a fatal error (fenced): it stops."""


class TransactionalClient(Protocol):
    """What TransactionalCommit asks of confluent-kafka's Producer (a fake in unit tests)."""

    def init_transactions(self, timeout: float = -1) -> None: ...

    def begin_transaction(self) -> None: ...

    def produce(  # noqa: PLR0917 - confluent-kafka's own signature
        self,
        topic: str,
        value: str | bytes | None = None,
        key: str | bytes | None = None,
        partition: int = -1,
        callback: Any = None,
        on_delivery: Any = None,
        timestamp: int = 0,
        headers: Any = None,
    ) -> None: ...

    def poll(self, timeout: float = -1) -> int: ...

    def send_offsets_to_transaction(
        self, positions: list[TopicPartition], group_metadata: Any, timeout: float = -1
    ) -> None: ...

    def commit_transaction(self, timeout: float = -1) -> None: ...

    def abort_transaction(self, timeout: float = -1) -> None: ...

    def flush(self, timeout: float = -1) -> int: ...


def member_identity(settings: Settings) -> str:
    """This process's stable identity: the `member` setting (else the host name) and the
    supervisor's process index (`--processes N`: each child its own; a restarted child gets
    its predecessor's)."""
    index = os.environ.get("KAFKAWORKER_PROCESS_INDEX", "0")
    return f"{settings.member or socket.gethostname()}.{index}"


def transactional_id(app_name: str, spec: HandlerSpec, settings: Settings) -> str:
    return f"{spec.group or app_name}.{spec.name}.{member_identity(settings)}"


def transactional_config(app_name: str, spec: HandlerSpec, settings: Settings) -> dict[str, Any]:
    """The app's producer configuration (acks=all, idempotence, murmur2: outputs land where
    at_least_once puts them) with this handler's transactional.id."""
    config = producer_config(settings)
    config["transactional.id"] = transactional_id(app_name, spec, settings)
    config.setdefault("client.id", f"{app_name}.{spec.name}.tx")
    given = settings.kafka.producer
    if "transaction.timeout.ms" not in given:
        # librdkafka refuses a delivery timeout longer than the transaction's: the producer's
        # 30 s is cut to the transaction's 10 s unless the settings chose one.
        delivery = int(config.get("delivery.timeout.ms", TRANSACTION_TIMEOUT_MS))
        if "delivery.timeout.ms" not in given and "message.timeout.ms" not in given:
            delivery = min(delivery, TRANSACTION_TIMEOUT_MS)
            config["delivery.timeout.ms"] = delivery
        config["transaction.timeout.ms"] = max(TRANSACTION_TIMEOUT_MS, delivery)
    return config


def new_transactional_client(config: dict[str, Any], *, timeout: float) -> TransactionalClient:
    """A transactional producer, initialised: init_transactions fences the previous producer
    of this transactional.id and aborts its open transaction (KIP-98), so a restarted member
    starts from settled offsets. A cluster without transactions is refused here, at start."""
    try:
        producer = confluent_kafka.Producer(config)
    except (KafkaException, ValueError, TypeError) as exc:
        raise StartupError(f"the transactional producer was rejected: {exc}") from None
    try:
        producer.init_transactions(timeout)
    except KafkaException as exc:
        error = exc.args[0]
        reason = error.str() if isinstance(error, KafkaError) else str(exc)
        raise StartupError(
            f"cannot start transactions for transactional.id {config['transactional.id']!r} "
            f"(exactly_once): {reason}; the cluster must support transactions (Kafka >= 2.5, "
            "transaction.state.log.* fitting its size)"
        ) from None
    return producer


class TransactionalCommit:
    """Commits an exactly_once handler's finished positions in transactions with the writes
    of the messages below them. Called on the poll thread only; owns the producer and closes
    it (close())."""

    def __init__(
        self,
        producer: TransactionalClient,
        source: TransactionalSource,
        held: HeldWrites,
        *,
        handler: str,
        interval: float,
        api_timeout: float,
        metrics: Metrics | None = None,
        clock: Clock = SYSTEM_CLOCK,
        renew: Callable[[], TransactionalClient] | None = None,
        spans: TransactionSpans | None = None,
    ) -> None:
        self._producer = producer
        # tracing.enabled: a span per transaction; the held records' send spans end here.
        self._spans = spans
        # Makes a fresh producer of the same transactional.id (see _renewed); None: never.
        self._renew = renew
        self._fenced_at = float("-inf")  # the last fence renewed (see _renewed)
        self._source = source
        self._held = held
        self._handler = handler
        self._interval = interval
        self._api_timeout = api_timeout  # retriable errors are retried this long per call
        self._clock = clock
        self._pending: dict[Partition, int] = {}  # moved since the last transaction
        # The latest position staged of each partition: staging that only changed what is
        # finished above it (the poll loop stages that too, for offset maps) is no news here.
        self._staged: dict[Partition, int] = {}
        self._last = clock.monotonic()
        # The poll loop's current lease of a partition (set by compose: Poller.lease_of).
        self.lease_of: Callable[[Partition], Lease | None] = lambda _: None
        self._fenced = False
        metrics = metrics or Metrics()
        self._committed = metrics.transactions.labels(handler, "committed")
        self._aborted = metrics.transactions.labels(handler, "aborted")
        self._seconds = metrics.transaction_seconds.labels(handler)
        self.commits = 0  # transactions committed
        self.aborts = 0  # transactions aborted

    # -- Committer -------------------------------------------------------------------------

    # No offset map in a transaction's commit, only the plain contiguous position (a map
    # already in the group's commits, left by an at_least_once run, is still honoured at
    # assignment: the messages it lists were finished and their writes produced). Why: the
    # hold rule above. A message finished above the position has its writes held until the
    # position passes it, so listing it in the map would let a restarted or a new owner skip
    # a message whose outputs were never committed: lost. A map would be right only if the
    # same transaction also committed those messages' writes, and that takes more than this
    # seam: HeldWrites.take() takes the writes below a position only; after an abort, the
    # rewind (Poller._rewind) starts from committed_positions(), which carries no metadata, so
    # it would run the messages a committed map lists again and write their outputs twice;
    # and a map the broker refuses (OFFSET_METADATA_TOO_LARGE) fails the whole transaction,
    # where OffsetCommit just commits the plain position. Until those are done and proved by
    # the fault tests, exactly_once commits what issue 26 proved: positions below which every
    # message is finished and its writes are in the same or an earlier transaction.

    def stage(self, partition: Partition, offsets: PartitionOffsets) -> None:
        """The partition's finished offsets changed; only a moved contiguous position is
        committed (see above)."""
        position = offsets.committable
        if position is None or self._staged.get(partition) == position:
            return
        self._staged[partition] = position
        self._pending[partition] = position

    def tick(self) -> list[Partition]:
        """Every turn: commit what moved once `transaction_interval` passed (sooner when many
        messages' writes are held). The partitions to rewind (a transaction aborted)."""
        if not self._pending:
            return []
        now = self._clock.monotonic()
        if now - self._last < self._interval and self._held.messages() < COMMIT_AT_HELD:
            return []
        self._last = now
        pending, self._pending = self._pending, {}
        if self._transaction(pending):
            return []
        return list(pending)

    def commit_now(self, partitions: Mapping[Partition, PartitionOffsets]) -> None:
        """Revoke and shutdown: commit these partitions' positions with their writes now. An
        abort here needs no rewind: the partitions are let go, their next owner delivers again
        from the committed positions."""
        positions = {
            partition: offsets.committable
            for partition, offsets in partitions.items()
            if offsets.committable is not None
        }
        for partition in partitions:
            self._pending.pop(partition, None)
        if positions:
            self._transaction(positions)

    def discard(self, partitions: Iterable[Partition]) -> None:
        """Forget these partitions' staged positions and held writes (they are let go)."""
        gone = set(partitions)
        for partition in gone:
            self._pending.pop(partition, None)
            self._staged.pop(partition, None)
        # Refusals are kept: a rewound partition's refused message is delivered again here.
        self._keep_current(gone)

    def unacknowledged(self, longer_than: float) -> set[Partition]:
        """None: a transaction's commit is waited for on the poll thread itself (no work is
        dispatched meanwhile), and an aborted one rewinds its partitions."""
        return set()

    def close(self) -> None:
        """The transaction is never open between commits: nothing to abort; flush what the
        producer may still send (nothing) and let it go."""
        if not self._fenced:
            self._producer.flush(1.0)

    # -- one transaction ---------------------------------------------------------------------

    def _keep_current(self, gone: set[Partition] | frozenset[Partition] = frozenset()) -> None:
        """Drop held writes of partitions let go, and of leases that are not current (a call
        that outlived its revoke held them afterwards)."""
        self._held.drop(
            {
                lease
                for lease in self._held.leases()
                if lease.partition not in gone and self.lease_of(lease.partition) is lease
            }
        )

    def _transaction(self, positions: dict[Partition, int]) -> bool:
        """One transaction: the held writes below `positions`, then the positions. True when
        it committed; False when it was aborted (the caller rewinds, or lets go)."""
        if self._fenced:
            return False
        started = time.monotonic()
        records: list[tuple[Partition, int, HeldRecord]] = []
        offsets: list[TopicPartition] = []
        for partition, position in positions.items():
            lease = self.lease_of(partition)
            if lease is None:
                continue  # let go meanwhile
            records += [(partition, o, r) for o, r in self._held.take(lease, position)]
            offsets.append(TopicPartition(partition.topic, partition.partition, position))
        self._keep_current()
        if not offsets:
            return True
        producer = self._producer
        refused: dict[tuple[Partition, int], KafkaError] = {}
        spans = self._spans
        span = None
        if spans is not None:
            span = spans.start_commit(len(offsets), [record.sending for _, _, record in records])
        try:
            self._call(producer.begin_transaction)
            for partition, offset, record in records:
                self._produce(record, self._on_delivery(refused, partition, offset, record))
            metadata = self._source.group_metadata()
            self._call(
                lambda: self._bounded(
                    lambda: producer.send_offsets_to_transaction(
                        offsets, metadata, self._api_timeout
                    ),
                    "send_offsets_to_transaction",
                )
            )
            self._call(lambda: producer.commit_transaction(self._api_timeout))
        except KafkaException as exc:
            try:
                self._abort(exc, offsets, len(records))
            finally:
                if spans is not None and span is not None:
                    error = exc.args[0]
                    if isinstance(error, KafkaError):
                        spans.aborted(span, error.name(), error.str())
                    else:
                        spans.aborted(span, type(exc).__name__, str(exc))
            self._refused(refused)
            return False
        if span is not None:
            span.end()
        self.commits += 1
        self._committed.inc()
        self._seconds.inc(time.monotonic() - started)
        return True

    def _on_delivery(
        self,
        refused: dict[tuple[Partition, int], KafkaError],
        partition: Partition,
        offset: int,
        held: HeldRecord,
    ) -> Callable[[KafkaError | None, Any], None]:
        """A record's delivery report (served inside commit_transaction's flush, on this
        thread, or by the abort's polls): a refusal that is the record's own is remembered
        with its message; the record's send span (traced) ends with it."""
        sending, spans = held.sending, self._spans

        def delivered(error: KafkaError | None, record: Any) -> None:
            if error is not None and error.code() in RECORD_ERRORS:
                refused[(partition, offset)] = error
            if sending is not None and spans is not None:
                if error is None:
                    spans.sends.delivered(sending, record.partition(), record.offset())
                else:
                    spans.sends.failed(sending, error.name(), error.str())

        return delivered

    def _refused(self, refused: Mapping[tuple[Partition, int], KafkaError]) -> None:
        """After an abort: the messages whose records the broker refused for themselves fail
        when delivered again (HeldOutputs), so the failure policy retries them and then sends
        them to the DLQ, instead of every transaction that holds them aborting for good."""
        for (partition, offset), error in refused.items():
            log.error(
                "the broker refused a record of this message; delivered again, the message "
                "fails (retries, then the DLQ)",
                handler=self._handler,
                topic=partition.topic,
                partition=partition.partition,
                offset=offset,
                error=error.str(),
            )
            self._held.refuse(
                partition,
                offset,
                ProduceError(f"the broker refused a record: {error.str()}", error),
            )

    def _produce(self, record: HeldRecord, on_delivery: Callable[..., None]) -> None:
        topic, key, value, headers, partition, _ = record
        while True:
            try:
                self._producer.produce(
                    topic, value, key, partition, on_delivery=on_delivery, headers=headers or None
                )
                return
            except BufferError:
                # librdkafka's queue is full: serving it makes room (no delivery callbacks are
                # set; a failed delivery fails commit_transaction, which aborts).
                self._producer.poll(_QUEUE_FULL_WAIT)

    def _bounded(self, api: Callable[[], None], name: str) -> None:
        """Call a transactional API that may not honour its timeout (see STUCK_MARGIN) on a
        daemon thread, and wait api_timeout + STUCK_MARGIN for it. Past that, a fatal
        _TIMED_OUT: the producer is given up (a fresh one, _renewed, fences it and aborts its
        transaction; the partitions are rewound), and the thread, which owns nothing else, is
        left to return when librdkafka does (daemon: it never holds the process's exit)."""
        outcome: list[BaseException | None] = []

        def run() -> None:
            try:
                api()
            except BaseException as exc:  # noqa: BLE001 - handed to the poll thread
                outcome.append(exc)
            else:
                outcome.append(None)

        thread = threading.Thread(target=run, name=f"{self._handler}-{name}", daemon=True)
        thread.start()
        thread.join(self._api_timeout + STUCK_MARGIN)
        if not outcome:
            raise KafkaException(
                KafkaError(
                    KafkaError._TIMED_OUT,
                    f"{name} did not return within {self._api_timeout + STUCK_MARGIN:.0f}s "
                    "(librdkafka#5456)",
                    fatal=True,
                )
            )
        if outcome[0] is not None:
            raise outcome[0]

    def _call(self, api: Callable[[], None]) -> None:
        """Call a transactional API, again while it fails with a retriable error (librdkafka:
        'the application may call the same API again'), for at most api_timeout."""
        deadline = time.monotonic() + self._api_timeout
        while True:
            try:
                api()
                return
            except KafkaException as exc:
                error = exc.args[0]
                if (
                    isinstance(error, KafkaError)
                    and error.retriable()
                    and not error.txn_requires_abort()
                    and not error.fatal()
                    and time.monotonic() < deadline
                ):
                    log.debug("transactional call failed, retrying", error=error.str())
                    continue
                raise

    def _renewed(self, abort_exc: KafkaException, reason: str) -> bool:
        """A fatal error from the transaction or its abort. librdkafka 2.16 aborts a
        transaction whose delivery failed by bumping the producer's epoch (KIP-360), which the
        coordinator refuses while the transaction is open, so the abort lasts until the
        coordinator times the transaction out; the coordinator's own epoch bump then sometimes
        fences this producer (seen in the abort tests, about one abort in ten). When the
        transaction coordinator's node dies while it leads an output partition, the abort may
        instead end in INVALID_TXN_STATE (librdkafka#4849's error), also fatal
        (tests/faults/test_cluster3.py, in 1 run of 7: at both kills; the second came 53 s
        after the first renewal, and the once-a-minute rule then stopped the handler).
        Nothing of the transaction is committed either way, and the rewind starts from the
        group's committed offsets, which say what was: a fresh producer of the same
        transactional.id (init_transactions) carries on. A fence (another instance's epoch)
        is renewed at most once a minute: a second process with this transactional.id fences
        it again, and then it stops. A fatal error that is no fence is renewed every time:
        each takes a failed transaction, and a cluster that refuses the fresh producer stops
        the handler at its init_transactions."""
        error = abort_exc.args[0]
        if self._renew is None or not (isinstance(error, KafkaError) and error.fatal()):
            return False
        now = time.monotonic()
        fence = error.code() in FENCES
        if fence:
            if now - self._fenced_at < 60.0:
                return False
            self._fenced_at = now
        log.warning(
            "the transactional producer was fenced (its transaction timed out, or it failed and "
            "was being aborted); starting a fresh one (nothing of the transaction is committed)"
            if fence
            else "the transactional producer hit a fatal error (an abort refused after the "
            "transaction coordinator moved, or a call stuck in librdkafka); starting a fresh one "
            "(nothing of the transaction is committed)",
            handler=self._handler,
            error=str(error),
            reason=reason,
        )
        self._producer = self._renew()
        return True

    def _abort(self, exc: KafkaException, offsets: list[TopicPartition], records: int) -> None:
        error = exc.args[0]
        reason = error.str() if isinstance(error, KafkaError) else str(exc)
        partitions = [f"{tp.topic}[{tp.partition}]" for tp in offsets]
        if isinstance(error, KafkaError) and error.fatal():
            # A process frozen past transaction.timeout.ms while its transaction was open (a
            # GC pause, a VM stall): the coordinator aborted it and bumped the epoch, and the
            # next call says "fenced by a newer instance", as a second process with this
            # transactional.id would (seen in tests/faults/test_exactly_once.py, the freeze
            # test, in one run of two). Nothing of the transaction is committed either way: a
            # fresh producer carries on and the partitions are rewound (librdkafka: fatal ->
            # a new producer), at most once a minute as below.
            if self._renewed(exc, reason):
                self.aborts += 1
                self._aborted.inc()
                return
            self._fenced = True
            # One line: what, why, what to do. The poll thread stops with it.
            message = (
                f"handler {self._handler!r} stops: its transactional producer was fenced "
                f"({reason}); another process runs with the same transactional.id (give each "
                "its own `member` setting) or took its partitions over; nothing of its open "
                "transaction is committed"
            )
            log.error(message)
            raise TransactionFencedError(message) from None
        # The delivery reports of the failed transaction (a refused record's own error, the
        # others' purges) are only served by poll(): serve them now, before and after the
        # abort, so that a refusal is known when its message is delivered again.
        self._producer.poll(0)
        try:
            self._call(lambda: self._producer.abort_transaction(self._api_timeout))
            self._producer.poll(0)
        except KafkaException as abort_exc:
            if self._renewed(abort_exc, reason):
                self.aborts += 1
                self._aborted.inc()
                return
            self._fenced = True
            message = (
                f"handler {self._handler!r} stops: its transaction could not be aborted "
                f"({abort_exc.args[0]}) after it failed ({reason})"
            )
            log.error(message)
            raise TransactionFencedError(message) from None
        self.aborts += 1
        self._aborted.inc()
        log.warning(
            "transaction aborted; its partitions are delivered again from their committed "
            "positions (nothing of it is visible to read_committed readers)",
            handler=self._handler,
            reason=reason,
            partitions=partitions,
            records=records,
        )

"""The bridge's writes, each in a Kafka transaction, so that every answer an RPC gets is true.

librdkafka knows, for a record that failed, whether it was never sent or sent and possibly
written (rd_kafka_message_status), but confluent-kafka 2.16 does not pass that on: a record
that timed out in flight to a hung broker and one that never left the queue both report
_MSG_TIMED_OUT, and the first is appended when the broker resumes (issue 32: ghost-2, answered
UNAVAILABLE, was in the log two seconds after SIGCONT). Purging the queue does not settle it
either: a record sent once and put back in the queue after a lost connection or a timed-out
request is purged as _PURGE_QUEUE while it may be in the log.

A transaction settles it. Its records become visible to read_committed consumers only when the
transaction commits, and only this producer can send the commit (EndTxn): a transaction it has
not begun committing can always be aborted instead, whatever is in the log. Hence three
outcomes, decided under one lock:

- Written: committed; the partition and offset are the record's.
- NotWritten: the commit was never sent and never will be (the transaction is aborted, or the
  record never reached one). Certain, so a retry cannot duplicate it.
- MaybeWritten: the commit was sent and not answered in time; it may have been applied.

The producer and its thread belong to TransactionalProducer: the thread alone calls the
producer (librdkafka's transactional API is not for concurrent callers), runs one transaction
at a time for the records waiting, and stops on close().
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import confluent_kafka
import structlog
from confluent_kafka import KafkaError, KafkaException

log = structlog.get_logger("bridge.transactions")

Headers = Sequence[tuple[str, bytes | None]]


@dataclass(frozen=True)
class Written:
    partition: int
    offset: int
    timestamp_ms: int


@dataclass(frozen=True)
class NotWritten:
    """Certainly not written; `error` is the broker's or librdkafka's reason when there is
    one that is the record's own (a topic it may not write...), None when it simply was not
    committed in time."""

    reason: str
    error: KafkaError | None = None


@dataclass(frozen=True)
class MaybeWritten:
    reason: str


Outcome = Written | NotWritten | MaybeWritten

# Errors a record's own delivery report or its transaction can end with that say something
# about the record (its topic, its size, the principal's rights) rather than the cluster's
# health: answered as they are, not retried in the next transaction.
_RECORD_ERRORS = frozenset(
    {
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._UNKNOWN_TOPIC,
        KafkaError._UNKNOWN_PARTITION,
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
    }
)


# What librdkafka reports for records it dropped with their transaction (abortable error).
_PURGED = frozenset({KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT})


class Record:
    """One record on its way: what to send, until when its caller waits, and its answer."""

    def __init__(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        headers: Headers,
        deadline: float,
    ) -> None:
        self.topic, self.value, self.key, self.headers = topic, value, key, headers
        self.deadline = deadline
        self.answer: Future[Outcome] = Future()
        self.transaction: Transaction | None = None  # None while waiting for one
        self.delivered: confluent_kafka.Message | None = None
        self.error: KafkaError | None = None


class Transaction:
    """The records of one transaction. `doomed`: a caller was told NotWritten, so it must not
    commit; `committing`: the commit may have been sent, so nobody may be told NotWritten."""

    def __init__(self, records: list[Record]) -> None:
        self.records = records
        self.reported = 0
        self.doomed = False
        self.committing = False


class TransactionalProducer:
    """Sends records in transactions; `submit()` from any thread, `give_up()` at a record's
    deadline, `close()` once."""

    def __init__(
        self,
        make_producer: Callable[[], confluent_kafka.Producer],
        *,
        api_timeout: float,
        init_timeout: float,
    ) -> None:
        self._make_producer = make_producer
        self._api_timeout = api_timeout  # commit and abort calls: retried while they time out
        self._init_timeout = init_timeout
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._waiting: collections.deque[Record] = collections.deque()
        self._stopping = False
        self._flush_timeout = 0.0
        self.undelivered = 0  # records the final transaction could not commit (close())
        # Daemon: stopped by close(); a start-up failed past start() must not keep the process.
        self._thread = threading.Thread(target=self._run, name="bridge-transactions", daemon=True)
        self._first: confluent_kafka.Producer | None = None

    def start(self) -> None:
        """Creates the producer here, so that a configuration librdkafka refuses is the
        caller's error, and starts the thread that owns it from then on."""
        self._first = self._make_producer()
        self._thread.start()

    # -- callers' side -------------------------------------------------------------------

    def submit(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None,
        headers: Headers,
        deadline: float,
    ) -> Record:
        record = Record(topic, value, key, headers, deadline)
        with self._changed:
            if self._stopping:
                record.answer.set_result(NotWritten("the bridge is shutting down"))
            else:
                self._waiting.append(record)
                self._changed.notify_all()
        return record

    def give_up(self, record: Record) -> Outcome:
        """The record's deadline has passed: its answer now, and a promise kept with it. A
        record not yet committing is withdrawn (its transaction will be aborted), so that
        NotWritten stays true; one whose commit may have been sent is MaybeWritten."""
        with self._lock:
            if record.answer.done():
                return record.answer.result()
            transaction = record.transaction
            if transaction is None:
                self._waiting.remove(record)
                outcome: Outcome = NotWritten("no transaction could be begun in time")
            elif not transaction.committing:
                transaction.doomed = True
                outcome = NotWritten("not acknowledged in time; its transaction is aborted")
            else:
                outcome = MaybeWritten("the commit was sent and not answered in time")
            record.answer.set_result(outcome)
            return outcome

    def close(self, flush_timeout: float) -> int:
        """Commits what is still waiting (callers that gave up included) within
        `flush_timeout`, then stops; returns how many records were not committed."""
        with self._changed:
            self._stopping = True
            self._flush_timeout = flush_timeout
            self._changed.notify_all()
        if self._thread.is_alive():
            self._thread.join()
        return self.undelivered

    # -- the thread's side ---------------------------------------------------------------

    def _answer(self, record: Record, outcome: Outcome) -> None:
        """Under the lock. The first answer stands: one given by give_up() is already true."""
        if not record.answer.done():
            if self._stopping and not isinstance(outcome, Written):
                self.undelivered += 1  # its caller is gone: close() reports it
            record.answer.set_result(outcome)

    def _run(self) -> None:
        producer, self._first = self._first, None
        ready = False
        try:
            while True:
                with self._changed:
                    if not self._waiting and not self._stopping:
                        self._changed.wait(0.5)
                    if self._stopping and (not self._waiting or not ready):
                        return  # at shutdown, a producer not initialised yet sends nothing
                if not ready:
                    producer = producer or self._make_producer()
                    ready = self._initialise(producer)
                elif self._waiting:
                    assert producer is not None
                    if not self._transaction(producer):
                        producer, ready = None, False  # a new producer's init settles it
                else:
                    assert producer is not None
                    producer.poll(0)  # librdkafka's logs and errors, while idle
        finally:
            self._fail_waiting()
            if producer is not None:
                producer.flush(0)

    def _initialise(self, producer: confluent_kafka.Producer) -> bool:
        """init_transactions(), False (retried by the loop: it may be called again) while the
        cluster does not answer; the records waiting meanwhile time out NotWritten."""
        try:
            producer.init_transactions(self._init_timeout)
        except KafkaException as exc:
            log.warning("cannot initialise transactions yet", error=exc.args[0].str())
            with self._changed:
                if not self._stopping:
                    self._changed.wait(1.0)
            return False
        log.info("transactions initialised")
        return True

    def _take(self) -> Transaction | None:
        """The records of the next transaction: those waiting for the first one's topic, in
        order. One topic per transaction: when librdkafka fails a transaction (a topic the
        principal may not write), the cause then belongs to every record in it."""
        now = time.monotonic()
        with self._lock:
            topic = None
            taken: list[Record] = []
            kept: collections.deque[Record] = collections.deque()
            for record in self._waiting:
                if record.answer.done():
                    continue
                if record.deadline <= now and not self._stopping:
                    self._answer(record, NotWritten("no transaction could be begun in time"))
                elif topic in (None, record.topic):
                    topic = record.topic
                    taken.append(record)
                else:
                    kept.append(record)
            self._waiting = kept
            if not taken:
                return None
            transaction = Transaction(taken)
            for record in taken:
                record.transaction = transaction
                record.delivered = record.error = None
            return transaction

    def _transaction(self, producer: confluent_kafka.Producer) -> bool:
        """One transaction; False when the producer is beyond use (fatal)."""
        transaction = self._take()
        if transaction is None:
            return True
        try:
            producer.begin_transaction()
        except KafkaException as exc:
            self._requeue(transaction)
            error: KafkaError = exc.args[0]
            log.error("cannot begin a transaction", error=error.str())
            return bool(error.retriable()) and not error.fatal()
        queued: list[Record] = []
        for record in transaction.records:
            try:
                producer.produce(
                    record.topic,
                    record.value,
                    key=record.key,
                    headers=list(record.headers),
                    on_delivery=self._on_delivery(transaction, record),
                )
                queued.append(record)
            except (BufferError, KafkaException) as exc:
                # Not queued, so not in the transaction: certain, and no reason to fail the
                # others. A full queue is the cluster's slowness (retryable); a
                # KafkaException here is the record's own (too large, no such partition).
                cause: KafkaError | None = None
                if isinstance(exc, KafkaException):
                    cause = exc.args[0]
                with self._lock:
                    self._answer(record, NotWritten(f"not queued: {exc}", cause))
        with self._lock:
            transaction.records = queued
        self._await_reports(producer, transaction)
        with self._lock:
            failed = any(r.error is not None for r in transaction.records)
            transaction.committing = bool(queued) and not (transaction.doomed or failed)
        if transaction.committing:
            return self._commit(producer, transaction)
        cause = self._cause(producer) if failed and not transaction.doomed else None
        return self._abort(producer, transaction, cause)

    def _on_delivery(
        self, transaction: Transaction, record: Record
    ) -> Callable[[KafkaError | None, confluent_kafka.Message], None]:
        def delivered(error: KafkaError | None, message: confluent_kafka.Message) -> None:
            with self._lock:
                if record.transaction is not transaction:
                    return  # a report of an earlier, aborted attempt
                record.delivered, record.error = message, error
                transaction.reported += 1

        return delivered

    def _await_reports(self, producer: confluent_kafka.Producer, transaction: Transaction) -> None:
        """Until every record is reported or a caller has given up on the transaction. poll()
        rather than flush(): linger.ms still batches; at shutdown, flush() sends at once."""
        while True:
            with self._lock:
                if transaction.doomed or transaction.reported == len(transaction.records):
                    return
                stopping = self._stopping
            if stopping:
                producer.flush(self._flush_timeout)
                with self._lock:
                    if transaction.reported < len(transaction.records):
                        transaction.doomed = True  # not delivered within the flush timeout
            else:
                producer.poll(0.05)

    def _cause(self, producer: confluent_kafka.Producer) -> KafkaError | None:
        """Why librdkafka failed the transaction (a topic the principal may not write is
        AddPartitionsToTxn's TOPIC_AUTHORIZATION_FAILED, reported on the records only as
        _PURGE_QUEUE). Asked of commit_transaction(), which cannot commit here: it sends no
        EndTxn once a delivery has failed in the transaction (txn_dr_fails > 0) or the
        transaction is in an abortable state (librdkafka rdkafka_txnmgr.c), and answers with
        the transaction's error instead."""
        try:
            # Not 0: a call that times out before its first step leaves a resumable commit
            # behind, which abort_transaction() then conflicts with. It answers at once.
            producer.commit_transaction(self._api_timeout)
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
            log.warning("transaction failed", cause=error.str(), code=error.name())
            return error
        log.error("a transaction with a failed delivery committed: librdkafka changed")
        return None

    def _commit(self, producer: confluent_kafka.Producer, transaction: Transaction) -> bool:
        try:
            producer.commit_transaction(self._api_timeout)
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
            if error.txn_requires_abort():  # refused by the coordinator: not committed
                return self._abort(producer, transaction, cause=error)
            log.warning("commit not answered in time", error=error.str())
            with self._lock:
                for record in transaction.records:
                    self._answer(record, MaybeWritten(f"the commit was not answered: {error}"))
            if error.fatal():
                log.error("transaction outcome unknown; new producer", error=error.str())
                return False
            return self._settle_commit(producer, len(transaction.records))
        with self._lock:
            told = sum(
                isinstance(r.answer.result(), MaybeWritten)
                for r in transaction.records
                if r.answer.done()
            )
            if told:
                # Its EndTxn was answered after their deadline (librdkafka waits for the
                # answer to an EndTxn it sent beyond the call's timeout).
                log.warning("a transaction told MaybeWritten committed", records=told)
            for record in transaction.records:
                message = record.delivered
                assert message is not None  # every record reported, none failed
                partition, offset = message.partition(), message.offset()
                assert partition is not None and offset is not None
                self._answer(record, Written(partition, offset, message.timestamp()[1]))
        return True

    def _settle_commit(self, producer: confluent_kafka.Producer, count: int) -> bool:
        """A commit that timed out is resumed until it is known (librdkafka: call
        commit_transaction again), so that the next transaction can begin; its callers were
        told MaybeWritten."""
        while True:
            try:
                producer.commit_transaction(self._api_timeout)
            except KafkaException as exc:
                error: KafkaError = exc.args[0]
                if error.retriable() and not self._stopped_waiting():
                    continue
                if error.txn_requires_abort():
                    log.warning("a transaction told MaybeWritten was aborted", records=count)
                    return self._abort(producer, None, cause=error)
                log.error("a transaction told MaybeWritten is unsettled", error=error.str())
                return False
            log.warning("a transaction told MaybeWritten committed", records=count)
            return True

    def _abort(
        self,
        producer: confluent_kafka.Producer,
        transaction: Transaction | None,
        cause: KafkaError | None,
    ) -> bool:
        """Aborts the transaction (retried while the coordinator does not answer: until then
        no other transaction begins, so records waiting time out NotWritten). Its records are
        answered NotWritten when the failure is theirs, else go back to wait for the next
        transaction while their callers still wait."""
        if transaction is not None:
            self._requeue(transaction, cause)
        while True:
            try:
                producer.abort_transaction(self._api_timeout)
                return True
            except KafkaException as exc:
                error: KafkaError = exc.args[0]
                if error.fatal():
                    # Seen after AddPartitionsToTxn failed (a topic the principal may not
                    # write): EndTxn(abort) is answered INVALID_TXN_STATE by Kafka 4.4,
                    # which librdkafka makes fatal (librdkafka#4849). Nothing was committed;
                    # a new producer's init_transactions() fences this one.
                    log.warning("cannot abort a transaction; new producer", error=error.str())
                    return False
                if error.code() == KafkaError._STATE:
                    return True  # nothing to abort (no transaction begun)
                if self._stopped_waiting():
                    log.error("transaction not aborted at shutdown", error=error.str())
                    return True
                log.warning("abort not answered yet; retrying", error=error.str())

    def _requeue(self, transaction: Transaction, cause: KafkaError | None = None) -> None:
        now = time.monotonic()
        with self._lock:
            again: list[Record] = []
            for record in transaction.records:
                own = record.error
                if own is None or own.code() in _PURGED:  # failed with its transaction
                    own = cause
                if own is not None and own.code() in _RECORD_ERRORS:
                    self._answer(record, NotWritten(own.str(), own))
                elif record.deadline <= now or self._stopping:
                    self._answer(record, NotWritten("not acknowledged in time"))
                if not record.answer.done():
                    record.transaction = None
                    again.append(record)
            self._waiting.extendleft(reversed(again))  # ahead of later records, in order

    def _stopped_waiting(self) -> bool:
        with self._lock:
            return self._stopping

    def _fail_waiting(self) -> None:
        with self._lock:
            self._stopping = True
            for record in self._waiting:
                self._answer(record, NotWritten("the bridge shut down before sending it"))
            self._waiting.clear()


def producer_settings(
    base: dict[str, Any], *, transactional_id: str, delivery_timeout: float
) -> dict[str, Any]:
    """librdkafka properties of the bridge's transactional producer over `base`."""
    delivery_ms = int(delivery_timeout * 1000)
    return {
        **base,
        "transactional.id": transactional_id,
        # The bridge answers at its own deadline (give_up); librdkafka's only bounds a
        # transaction whose callers all went away. It must not exceed the transaction's.
        "delivery.timeout.ms": delivery_ms,
        "transaction.timeout.ms": max(60_000, delivery_ms + 10_000),
        # The bridge never creates topics: a record for a missing one is NOT_FOUND.
        "allow.auto.create.topics": False,
    }

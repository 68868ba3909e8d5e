"""exactly_once without a broker: what is refused at declaration, the hold-until-committable
rule turn by turn (a poller over the in-memory source, a hand-driven executor, a manual clock
and a fake transactional producer that records each transaction), aborts and rewinds, fencing,
revokes, and a running handler whose outputs are counted in the committed transactions."""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from kafkaworker import App, Message
from kafkaworker.errors import ConfigError
from kafkaworker.handlers import BatchPolicy, HandlerSpec, resolve_specs
from kafkaworker.observability.metrics import Metrics
from kafkaworker.producer import TRANSACTION_SCOPE, ProduceError, Producer, TransactionScope
from kafkaworker.runtime.clock import ManualClock
from kafkaworker.runtime.compose import AppRuntime, GivenSources
from kafkaworker.runtime.handoff import (
    Completion,
    CompletionQueue,
    HeldRecord,
    HeldWrites,
    Lease,
)
from kafkaworker.runtime.poll.delayed import DelayedRetries
from kafkaworker.runtime.poll.poller import Poller
from kafkaworker.runtime.poll.transactions import (
    STUCK_MARGIN,
    TransactionalClient,
    TransactionalCommit,
    TransactionFencedError,
)
from kafkaworker.runtime.source import OffsetAndMetadata, Partition
from kafkaworker.runtime.source.memory import MemorySource
from kafkaworker.serialization import CODECS
from kafkaworker.settings import Settings
from tests.unit.runtime_support import settings as runtime_settings
from tests.unit.test_poll_turns import FINISHED, HandExecutor

P0, P1 = Partition("t", 0), Partition("t", 1)
EOS = "exactly_once"


# -- declaration -------------------------------------------------------------------------------


def declare(**options: Any) -> HandlerSpec:
    app = App("svc")

    def handle(msg: Message[Any]) -> None:
        pass

    app.handler("t", name="handle", **options)(handle)
    return app.handlers["handle"]


def test_the_guarantee_defaults_to_at_least_once() -> None:
    assert declare().processing_guarantee == "at_least_once"
    assert declare(processing_guarantee=EOS, output="o").processing_guarantee == EOS


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"mode": "queue"}, "a share group (KIP-932) has no transactions"),
        ({"processing_guarantee": "exactly-once"}, "allowed are at_least_once, exactly_once"),
    ],
)
def test_what_exactly_once_cannot_honour_is_refused_in_one_line(
    options: dict[str, Any], says: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        declare(**{"processing_guarantee": EOS, **options})
    assert says in str(refused.value) and "\n" not in str(refused.value)


def resolved(settings: dict[str, Any], **options: Any) -> HandlerSpec:
    app = App("svc")

    def handle(msg: Message[Any]) -> None:
        pass

    app.handler("t", name="handle", output="o", **options)(handle)
    [spec] = resolve_specs(app, Settings.model_validate(settings))
    return spec


def test_the_settings_set_the_guarantee_app_wide_and_per_handler() -> None:
    assert resolved({"processing_guarantee": EOS}).processing_guarantee == EOS
    # The handler's own declaration wins over the app-wide default...
    declared = resolved({"processing_guarantee": EOS}, processing_guarantee="at_least_once")
    assert declared.processing_guarantee == "at_least_once"
    # ...and handlers.<name> wins over both.
    override = {"handlers": {"handle": {"processing_guarantee": EOS}}}
    assert resolved(override, processing_guarantee="at_least_once").processing_guarantee == EOS
    # Made exactly_once by the settings, a queue-mode handler is refused, not run at-least-once.
    with pytest.raises(ConfigError, match="has no transactions"):
        resolved({"processing_guarantee": EOS}, mode="queue")


@pytest.mark.parametrize(
    ("settings", "says"),
    [
        ({"kafka": {"producer": {"transactional.id": "x"}}}, "remove kafka.producer.trans"),
        ({"kafka": {"producer": {"enable.idempotence": False}}}, "enable.idempotence=false"),
        ({"kafka": {"producer": {"acks": 1}}}, "transactions need acks=all"),
        (
            {"kafka": {"consumer": {"isolation.level": "read_uncommitted"}}},
            "must be read_committed",
        ),
        ({"kafka": {"consumer": {"enable.auto.commit": True}}}, "enable.auto.commit"),
    ],
)
def test_settings_that_break_transactions_are_refused_at_load(
    settings: dict[str, Any], says: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        resolved({**settings, "processing_guarantee": EOS})
    assert says in str(refused.value) and "\n" not in str(refused.value)
    resolved(settings)  # the same settings are fine at least once


def test_app_producer_keeps_an_exactly_once_calls_sends_and_refuses_others() -> None:
    producer = Producer(Settings.model_validate({"kafka": {"bootstrap_servers": "127.0.0.1:1"}}))
    scope = TransactionScope("copy")
    token = TRANSACTION_SCOPE.set(scope)
    try:
        # Outside a call (a batch handler, say): refused, never sent around the transaction.
        with pytest.raises(ProduceError, match="exactly_once handler 'copy'"):
            producer.send("out", b"x")
        scope.sends = []  # a call
        sent = producer.send_sync("out", {"n": 1}, key="k", headers=[("h", b"1")])
        assert (sent.topic(), sent.partition(), sent.offset()) == ("out", None, None)
        assert scope.sends == [("out", "k", b'{"n":1}', [("h", b"1")], -1)]
    finally:
        TRANSACTION_SCOPE.reset(token)
        producer.close(0)


# -- a fake transactional producer -------------------------------------------------------------


class FakeTransactions:
    """Records each transaction; commits its offsets to the in-memory source as the group
    coordinator would. `fail[api]`: the error the next call of that API raises."""

    def __init__(self, source: MemorySource) -> None:
        self.source = source
        self.open: list[tuple[str, bytes | None, bytes | None]] | None = None
        self.offsets: dict[Partition, int] = {}
        self.metadata: dict[Partition, str] = {}  # the offsets' metadata (offset maps)
        self.committed: list[
            tuple[list[tuple[str, bytes | None, bytes | None]], dict[Partition, int]]
        ] = []
        self.aborted = 0
        self.fail: dict[str, KafkaError] = {}
        # Each record's delivery callback and headers, in the order produced.
        self.produced: list[tuple[Any, list[tuple[str, bytes | None]]]] = []
        self.lock = threading.Lock()

    def _maybe_fail(self, api: str) -> None:
        error = self.fail.pop(api, None)
        if error is not None:
            raise KafkaException(error)

    def init_transactions(self, timeout: float = -1) -> None:
        pass

    def begin_transaction(self) -> None:
        assert self.open is None, "a transaction is open already"
        self._maybe_fail("begin")
        self.open, self.offsets = [], {}

    def produce(  # noqa: PLR0917 - confluent-kafka's signature
        self,
        topic: str,
        value: str | bytes | None = None,
        key: str | bytes | None = None,
        partition: int = -1,
        callback: Any = None,
        on_delivery: Any = None,
        timestamp: int = 0,
        headers: Any = None,
    ) -> None:
        assert self.open is not None, "produce outside a transaction"
        assert not isinstance(value, str) and not isinstance(key, str)
        self.open.append((topic, key, value))
        self.produced.append((on_delivery, list(headers or ())))

    def poll(self, timeout: float = -1) -> int:
        return 0

    def send_offsets_to_transaction(
        self, positions: list[TopicPartition], group_metadata: Any, timeout: float = -1
    ) -> None:
        assert self.open is not None and group_metadata is not None
        self._maybe_fail("send_offsets")
        self.offsets = {Partition(tp.topic, tp.partition): tp.offset for tp in positions}
        self.metadata = {Partition(tp.topic, tp.partition): tp.metadata or "" for tp in positions}

    def commit_transaction(self, timeout: float = -1) -> None:
        assert self.open is not None
        self._maybe_fail("commit")
        with self.lock:
            self.committed.append((self.open, self.offsets))
        self.source.commit(
            {p: OffsetAndMetadata(offset, self.metadata[p]) for p, offset in self.offsets.items()}
        )
        self.open = None

    def abort_transaction(self, timeout: float = -1) -> None:
        self._maybe_fail("abort")
        self.open = None
        self.aborted += 1

    def flush(self, timeout: float = -1) -> int:
        return 0

    def outputs(self) -> list[bytes | None]:
        with self.lock:
            return [value for records, _ in self.committed for _, _, value in records]


def abortable(reason: str = "a delivery failed") -> KafkaError:
    return KafkaError(KafkaError._STATE, reason, txn_requires_abort=True)


# -- turn by turn --------------------------------------------------------------------------------


class ReportingExecutor(HandExecutor):
    def __init__(self, completions: CompletionQueue) -> None:
        super().__init__(completions)
        self.completions = completions

    def report(self, completion: Completion) -> None:
        """A report from a call still running (not one of `queued`)."""
        self.completions.put([completion])


class EosTurns:
    """A stream-mode poller over a MemorySource committing through TransactionalCommit,
    turned by hand; the test plays the workers: it holds a message's writes (as HeldOutputs
    does) and then reports it finished."""

    INTERVAL = 0.1

    def __init__(self, partitions: int = 1, *, renewable: bool = False) -> None:
        self.clock = ManualClock()
        self.renewed = 0
        self.source = MemorySource({"t": partitions}, clock=self.clock)
        completions: CompletionQueue = queue.SimpleQueue()
        self.executor = ReportingExecutor(completions)
        self.held = HeldWrites()
        self.producer = FakeTransactions(self.source)
        client: TransactionalClient = self.producer
        self.metrics = Metrics()
        self.committer = TransactionalCommit(
            client,
            self.source,
            self.held,
            handler="handle",
            interval=self.INTERVAL,
            api_timeout=1.0,
            metrics=self.metrics,
            clock=self.clock,
            renew=self._renew if renewable else None,
        )
        self.poller = Poller(
            declare(processing_guarantee=EOS, output="o", codec="raw"),
            runtime_settings(),
            self.source,
            self.executor,
            completions,
            committer=self.committer,
            codec=CODECS["raw"],
            topics=["t"],
            delayed=DelayedRetries([], clock=self.clock),
            metrics=self.metrics,
            clock=self.clock,
        )
        self.committer.lease_of = self.poller.lease_of
        self.poller.subscribe()
        self.poller.turn()  # the assignment

    def _renew(self) -> TransactionalClient:
        self.renewed += 1
        self.producer.open = None
        return self.producer

    def append(self, count: int, partition: int = 0) -> None:
        for i in range(count):
            self.source.broker.append("t", b"%d" % i, partition=partition)

    def lease(self, partition: int = 0) -> Lease:
        lease = self.poller.lease_of(Partition("t", partition))
        assert lease is not None
        return lease

    def finish(self, offsets: list[int], partition: int = 0) -> None:
        """The workers finish these messages: each holds its output, then is reported."""
        lease = self.lease(partition)
        for offset in offsets:
            value = b"out-%d-%d" % (partition, offset)
            self.held.hold(lease, offset, [HeldRecord("o", None, value, [])])
        self.executor.finish(partition, offsets, FINISHED, lease=lease)

    def interval(self) -> None:
        """A turn once the transaction interval has passed."""
        self.clock.advance(self.INTERVAL)
        self.poller.turn()


def test_a_message_finished_above_the_position_keeps_its_writes_until_it_is_committable() -> None:
    turns = EosTurns()
    turns.append(5)
    turns.poller.turn()  # dispatches 0..4
    turns.finish([1, 2, 3])  # 0 still runs: nothing is committable
    turns.interval()
    assert turns.producer.committed == []
    assert turns.held.messages() == 3  # their writes wait
    turns.finish([0])
    turns.interval()
    # One transaction: the writes of 0..3 (offset order), with the position they finish.
    [(records, offsets)] = turns.producer.committed
    assert [v for _, _, v in records] == [b"out-0-0", b"out-0-1", b"out-0-2", b"out-0-3"]
    assert offsets == {P0: 4}
    assert turns.source.committed[P0] == 4
    assert turns.held.messages() == 0


def test_a_transaction_holds_only_writes_of_messages_whose_offsets_it_commits() -> None:
    turns = EosTurns(2)
    turns.append(4, partition=0)
    turns.append(3, partition=1)
    turns.poller.turn()
    turns.finish([0, 2, 3], partition=0)  # 1 still runs
    turns.finish([1, 2], partition=1)  # 0 still runs
    turns.interval()
    [(records, offsets)] = turns.producer.committed
    assert [v for _, _, v in records] == [b"out-0-0"]
    assert offsets == {P0: 1}  # partition 1 has nothing committable: not in it
    assert turns.held.messages() == 4  # 0:2, 0:3, 1:1, 1:2 wait for the messages below them
    turns.finish([1], partition=0)
    turns.finish([0], partition=1)
    turns.interval()
    records, offsets = turns.producer.committed[1]
    assert sorted(v for _, _, v in records) == [
        b"out-0-1",
        b"out-0-2",
        b"out-0-3",
        b"out-1-0",
        b"out-1-1",
        b"out-1-2",
    ]
    # Within a partition in offset order (what keeps each key's order).
    assert [v for _, _, v in records if v and v.startswith(b"out-0")] == [
        b"out-0-1",
        b"out-0-2",
        b"out-0-3",
    ]
    assert offsets == {P0: 4, P1: 3}
    assert turns.producer.aborted == 0


def test_a_transaction_commits_the_plain_position_never_an_offset_map() -> None:
    # The hold rule: a message finished above the position has its writes held, so no map may
    # list it (a new owner would skip a message whose outputs were never committed).
    turns = EosTurns()
    turns.append(5)
    turns.poller.turn()
    turns.finish([0, 2, 3])  # 1 still runs
    turns.interval()
    [(_, offsets)] = turns.producer.committed
    assert offsets == {P0: 1} and turns.producer.metadata == {P0: ""}
    assert turns.source.metadata[P0] == ""
    # Finishing more above the position moves no position: no transaction for it.
    turns.finish([4])
    turns.interval()
    assert len(turns.producer.committed) == 1
    assert turns.held.messages() == 3
    turns.finish([1])
    turns.interval()
    assert turns.producer.committed[-1][1] == {P0: 5}
    assert turns.producer.metadata == {P0: ""}
    assert turns.producer.outputs() == [b"out-0-%d" % i for i in range(5)]


def test_transactions_wait_for_the_interval() -> None:
    turns = EosTurns()
    turns.append(2)
    turns.poller.turn()
    turns.finish([0])
    turns.poller.turn()  # the interval has not passed since the assignment turn
    turns.clock.advance(EosTurns.INTERVAL / 2)
    turns.poller.turn()
    assert turns.producer.committed == []
    turns.interval()
    assert len(turns.producer.committed) == 1


def test_an_abortable_error_aborts_rewinds_to_the_committed_position_and_delivers_again() -> None:
    turns = EosTurns()
    turns.append(4)
    turns.poller.turn()
    turns.finish([0, 1])
    turns.interval()  # commits 0..1
    old = turns.lease()
    turns.finish([2, 3])
    turns.producer.fail["commit"] = abortable()
    turns.executor.queued.clear()
    turns.interval()  # aborted: rewound to 2
    assert turns.producer.aborted == 1
    assert turns.source.committed[P0] == 2
    assert turns.lease() is not old and old.revoked
    assert turns.held.messages() == 0  # the aborted transaction's writes are gone with it
    assert turns.source.position(P0) == 2
    turns.poller.turn()  # 2 and 3 are delivered again, under the new lease
    assert [m.offset for m in turns.executor.queued] == [2, 3]
    assert all(m.lease is turns.lease() for m in turns.executor.queued)
    turns.finish([2, 3])
    turns.interval()
    assert turns.producer.outputs() == [b"out-0-0", b"out-0-1", b"out-0-2", b"out-0-3"]
    assert turns.source.committed[P0] == 4
    assert turns.metrics.transactions.labels("handle", "aborted")._value.get() == 1


def test_a_report_of_the_rewound_lease_is_ignored_and_its_late_writes_are_dropped() -> None:
    turns = EosTurns()
    turns.append(2)
    turns.poller.turn()
    old = turns.lease()
    turns.finish([0])
    turns.producer.fail["send_offsets"] = abortable("the generation is gone")
    turns.interval()  # aborted: 1 still "runs" under the old lease
    # The call of 1 outlived the rewind: it holds its writes and reports under the old lease.
    turns.held.hold(old, 1, [HeldRecord("o", None, b"stale", [])])
    turns.executor.report(Completion(old, [1], FINISHED))
    turns.poller.turn()  # redelivers 0 and 1
    turns.finish([0, 1])
    turns.interval()
    assert b"stale" not in turns.producer.outputs()
    assert turns.producer.outputs() == [b"out-0-0", b"out-0-1"]


def test_a_fenced_producer_stops_the_handler_in_one_line() -> None:
    turns = EosTurns()
    turns.append(1)
    turns.poller.turn()
    turns.finish([0])
    turns.producer.fail["commit"] = KafkaError(
        KafkaError._FENCED, "producer fenced by a newer instance", fatal=True
    )
    with pytest.raises(TransactionFencedError) as stopped:
        turns.interval()
    assert "its transactional producer was fenced" in str(stopped.value)
    assert "\n" not in str(stopped.value)
    turns.poller.shutdown()  # commits nothing more: the producer is fenced
    assert turns.producer.committed == []


def test_a_retriable_error_calls_the_same_api_again() -> None:
    turns = EosTurns()
    turns.append(1)
    turns.poller.turn()
    turns.finish([0])
    turns.producer.fail["commit"] = KafkaError(KafkaError._TIMED_OUT, "timed out", retriable=True)
    turns.interval()
    assert turns.producer.aborted == 0
    assert turns.producer.outputs() == [b"out-0-0"]


def test_a_revoke_commits_what_is_committable_and_drops_the_rest() -> None:
    turns = EosTurns(2)
    turns.append(3, partition=0)
    turns.append(1, partition=1)
    turns.poller.turn()
    turns.finish([0, 2], partition=0)  # 1 is given up at the revoke
    turns.finish([0], partition=1)
    revoked_lease = turns.lease(0)
    turns.source.revoke([P0])
    turns.executor.finish(0, [1], outcome=0, lease=revoked_lease)  # NOT_FINISHED
    turns.poller.turn()  # the revoke: committed at once, not at the interval
    [(records, offsets)] = turns.producer.committed
    assert [v for _, _, v in records] == [b"out-0-0"]
    assert offsets == {P0: 1}
    # 0:2 was finished above the position: dropped with its partition, never committed.
    turns.interval()
    assert b"out-0-2" not in turns.producer.outputs()
    assert turns.producer.committed[-1][1] == {P1: 1}
    assert turns.held.messages() == 0


def test_lost_partitions_commit_nothing() -> None:
    turns = EosTurns()
    turns.append(2)
    turns.poller.turn()
    turns.finish([0, 1])
    turns.source.lose([P0])
    turns.interval()
    assert turns.producer.committed == []
    assert turns.held.messages() == 0


# -- a running handler ---------------------------------------------------------------------------


def copier(**options: Any) -> HandlerSpec:
    app = App("svc")

    def copy(msg: Message[Any]) -> dict[str, Any]:
        return {"in": msg.value}

    app.handler("t", name="copy", output="o", codec="json", **options)(copy)
    return app.handlers["copy"]


@contextmanager
def copying(
    fake: FakeTransactions,
    concurrency: int = 8,
    spec: HandlerSpec | None = None,
    **setting_values: Any,
) -> Iterator[tuple[MemorySource, FakeTransactions]]:
    """A running exactly_once copier (or `spec`) over `fake`'s in-memory source; stopped on
    exit."""
    source = fake.source
    spec = spec or copier(processing_guarantee=EOS, ordering="key", concurrency=concurrency)
    runtime = AppRuntime(
        App("svc"),
        runtime_settings(transaction_interval=0.02, **setting_values),
        [spec],
        sources=GivenSources({spec.name: source}),
        transactions=lambda app, s, settings: fake,
    )
    with runtime:
        [handler] = runtime.handlers
        handler.start()
        yield source, fake
        handler.request_stop()
        assert handler.join(30), "the poll thread did not stop"
        assert handler.error is None, handler.error


@pytest.fixture
def running_copier() -> Iterator[tuple[MemorySource, FakeTransactions]]:
    with copying(FakeTransactions(MemorySource({"t": 4, "o": 1}))) as running:
        yield running


def test_a_running_handler_commits_every_output_exactly_once_in_key_order(
    running_copier: tuple[MemorySource, FakeTransactions],
) -> None:
    source, fake = running_copier
    total = 2000
    for i in range(total):
        key = b"k%d" % (i % 37)
        # A key's inputs all in one partition, as a keyed producer puts them.
        source.broker.append("t", orjson.dumps(i), key=key, partition=(i % 37) % 4)
    partitions = [Partition("t", p) for p in range(4)]
    assert source.wait_for(
        lambda s: all(s.committed.get(p) == s.log_size(p) for p in partitions), 30
    ), "every input committed"
    outputs = [orjson.loads(v or b"")["in"] for v in fake.outputs()]
    assert Counter(outputs) == Counter(range(total))  # each exactly once
    # Per key, in input order (the key's inputs in one partition, in offset order).
    by_key: dict[int, list[int]] = {}
    for value in outputs:
        by_key.setdefault(value % 37, []).append(value)
    assert all(values == sorted(values) for values in by_key.values())
    assert len(fake.committed) > 1  # many transactions, not one at the end


# -- the TestClient ------------------------------------------------------------------------------


def test_the_test_client_shows_an_exactly_once_handlers_committed_writes() -> None:
    from kafkaworker.testing import TestClient  # noqa: PLC0415

    app = App("svc")

    @app.handler("in", output="out", dlq="in.dlq", processing_guarantee=EOS)
    def accept(msg: Message[dict[str, Any]]) -> dict[str, Any]:
        if msg.value["id"] < 0:
            raise ValueError("negative")
        return {"id": msg.value["id"], "ok": True}

    calls: Counter[int] = Counter()

    @app.handler("side", processing_guarantee=EOS, retries=1, output="out")
    def side(msg: Message[Any]) -> dict[str, Any]:
        calls[msg.value] += 1
        app.producer.send("elsewhere", {"sent": msg.value, "call": calls[msg.value]})
        app.producer.send_sync("elsewhere", {"also": msg.value, "call": calls[msg.value]})
        if calls[msg.value] == 1:
            raise ValueError("the first call fails after sending: its sends are dropped")
        return {"side": msg.value}

    with TestClient(app) as client:
        done = client.send("in", {"id": 1})
        assert done.outcome == "finished"
        assert [r.json() for r in done.records if r.topic == "out"] == [{"id": 1, "ok": True}]
        failed = client.send("in", {"id": -1})
        assert failed.outcome == "dead_lettered"
        assert [r.topic for r in failed.records] == ["in.dlq"]
        sent = client.send("side", 7)
        assert sent.outcome == "finished" and sent.attempts == 2
        # The second call's sends, before its output, in the order made; the first's never.
        assert [r.json() for r in client.records("elsewhere")] == [
            {"sent": 7, "call": 2},
            {"also": 7, "call": 2},
        ]
        assert [r.topic for r in client.records()] == [
            "out",
            "in.dlq",
            "elsewhere",
            "elsewhere",
            "out",
        ]


def test_a_retry_topic_record_commits_with_the_input_it_finishes() -> None:
    from kafkaworker.testing import TestClient  # noqa: PLC0415

    app = App("svc")

    @app.handler("in", output="out", retry_topics=[5.0], processing_guarantee=EOS)
    def flaky(msg: Message[dict[str, Any]]) -> dict[str, Any]:
        raise ValueError("later")

    with TestClient(app) as client:
        delivery = client.send("in", {"id": 1})
        assert delivery.outcome == "retry_topic"
        [record] = client.records()
        assert record.topic != "out" and record.json() == {"id": 1}


def test_a_batch_handlers_dead_letters_commit_once_with_the_offsets_they_finish() -> None:
    source = MemorySource({"t": 2, "dlq": 1})
    fake = FakeTransactions(source)
    app = App("svc")

    @app.handler(
        "t",
        dlq="dlq",
        codec="json",
        batch=BatchPolicy(max_size=50, max_wait=0.01),
        retry_on=TimeoutError,
        processing_guarantee=EOS,
    )
    def bulk(batch: list[Message[Any]]) -> None:
        # A fatal error fails a batch whole; it runs again one message at a time, and only
        # the bad ones are dead-lettered (execute/batches.py).
        if any(m.value % 50 == 7 for m in batch):
            raise ValueError("bad")

    [spec] = app.handlers.values()
    runtime = AppRuntime(
        App("svc"),
        runtime_settings(transaction_interval=0.02, circuit_breaker={"enabled": False}),
        [spec],
        sources=GivenSources({spec.name: source}),
        transactions=lambda app_name, s, settings: fake,
    )
    total = 600
    with runtime:
        [handler] = runtime.handlers
        handler.start()
        for i in range(total):
            source.broker.append("t", orjson.dumps(i), partition=i % 2)
        partitions = [Partition("t", 0), Partition("t", 1)]
        assert source.wait_for(
            lambda s: all(s.committed.get(p) == s.log_size(p) for p in partitions), 30
        ), "every input committed"
        handler.request_stop()
        assert handler.join(30)
    dead = Counter(orjson.loads(v or b"") for v in fake.outputs())
    assert dead == Counter(i for i in range(total) if i % 50 == 7)


def test_manual_acks_and_nacks_after_the_handler_returned_commit_once() -> None:
    source = MemorySource({"t": 2, "dlq": 1})
    fake = FakeTransactions(source)
    app = App("svc")
    later: queue.SimpleQueue[Message[Any]] = queue.SimpleQueue()

    @app.handler("t", dlq="dlq", codec="json", ack="manual", processing_guarantee=EOS)
    def hand_over(msg: Message[Any]) -> None:
        later.put(msg)  # acked or nacked by another thread, after the handler returned

    def settle() -> None:
        while (msg := later.get()) is not None:
            if msg.value % 10 == 3:
                msg.nack(ValueError("bad"))
            else:
                msg.ack()

    [spec] = app.handlers.values()
    runtime = AppRuntime(
        App("svc"),
        runtime_settings(transaction_interval=0.02, circuit_breaker={"enabled": False}),
        [spec],
        sources=GivenSources({spec.name: source}),
        transactions=lambda app_name, s, settings: fake,
    )
    total = 300
    settler = threading.Thread(target=settle, daemon=True)
    settler.start()
    with runtime:
        [handler] = runtime.handlers
        handler.start()
        for i in range(total):
            source.broker.append("t", orjson.dumps(i), partition=i % 2)
        partitions = [Partition("t", 0), Partition("t", 1)]
        assert source.wait_for(
            lambda s: all(s.committed.get(p) == s.log_size(p) for p in partitions), 30
        ), "every input committed"
        handler.request_stop()
        assert handler.join(30)
    later.put(None)  # type: ignore[arg-type]
    dead = Counter(orjson.loads(v or b"") for v in fake.outputs())
    assert dead == Counter(i for i in range(total) if i % 10 == 3)


def test_routes_show_the_guarantee_of_exactly_once_handlers() -> None:
    from click.testing import CliRunner  # noqa: PLC0415

    from kafkaworker.cli import cli  # noqa: PLC0415

    shown = CliRunner().invoke(cli, ["routes", "tests.apps.eos_copier:app"])
    assert shown.exit_code == 0, shown.output
    assert "GUARANTEE" in shown.output and "exactly_once" in shown.output


def test_the_transactional_id_is_stable_per_group_handler_member_and_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from kafkaworker.runtime.poll.transactions import transactional_config  # noqa: PLC0415

    spec = declare(processing_guarantee=EOS, output="o")
    settings = Settings.model_validate({"member": "pod-3"})
    monkeypatch.setenv("KAFKAWORKER_PROCESS_INDEX", "2")
    config = transactional_config("svc", spec, settings)
    assert config["transactional.id"] == "svc.handle.pod-3.2"
    # librdkafka refuses a delivery timeout above the transaction's: both 10 s by default.
    assert config["transaction.timeout.ms"] == config["delivery.timeout.ms"] == 10_000
    assert config["acks"] == "all" and config["enable.idempotence"] is True


def test_each_refusal_of_a_messages_record_counts_as_one_failed_attempt() -> None:
    from confluent_kafka import Message as Record  # noqa: PLC0415

    from kafkaworker.message import DispatchedMessage  # noqa: PLC0415
    from kafkaworker.runtime.execute.outputs import HeldOutputs  # noqa: PLC0415

    held = HeldWrites()
    outputs = HeldOutputs(
        None, held, topic="o", codec=CODECS["json"], produce_timeout=1, write_timeout=1
    )
    lease = Lease(P0)
    [msg] = DispatchedMessage.run_of(
        lease, [Record(topic="t", partition=0, offset=5, value=b"1")], [5], CODECS["json"]
    )
    refused = ProduceError("the broker refused a record: Message size too large")
    held.refuse(P0, 5, refused)
    held.refuse(P0, 5, refused)  # its records aborted two transactions
    for attempt in (1, 2):
        msg.attempt = attempt
        assert outputs.emit(msg, {"big": True}) is refused
        assert held.messages() == 0
    msg.attempt = 3  # more attempts than refusals: held again (or, out of retries, the DLQ)
    assert outputs.emit(msg, {"big": True}) is None
    assert [r.value for _, r in held.take(lease, 6)] == [b'{"big":true}']


def test_a_producer_fenced_while_it_aborts_is_renewed_once_and_the_partitions_rewound() -> None:
    turns = EosTurns(renewable=True)
    turns.append(2)
    turns.poller.turn()
    turns.finish([0, 1])
    turns.producer.fail["commit"] = abortable("a record was refused")
    # The coordinator timed the transaction out during the abort and fenced the producer.
    turns.producer.fail["abort"] = KafkaError(KafkaError._FENCED, "fenced", fatal=True)
    turns.interval()
    assert turns.renewed == 1
    assert turns.source.position(P0) == 0  # rewound
    turns.poller.turn()
    turns.finish([0, 1])
    turns.interval()
    assert turns.producer.outputs() == [b"out-0-0", b"out-0-1"]
    # A second fence within a minute: another process has this transactional.id. It stops.
    turns.append(1)
    turns.poller.turn()
    turns.finish([2])
    turns.producer.fail["commit"] = abortable()
    turns.producer.fail["abort"] = KafkaError(KafkaError._FENCED, "fenced", fatal=True)
    with pytest.raises(TransactionFencedError, match="could not be aborted"):
        turns.interval()
    assert turns.renewed == 1


def test_a_producer_fenced_in_its_transaction_is_renewed_once_and_the_partitions_rewound() -> None:
    """The coordinator timed the transaction out (the process was frozen past
    transaction.timeout.ms) and bumped the epoch: the commit says fenced, as librdkafka does
    for a newer instance. A fresh producer redoes the work; a second fence within a minute is
    another process with this transactional.id, and the handler stops."""
    turns = EosTurns(renewable=True)
    turns.append(2)
    turns.poller.turn()
    turns.finish([0, 1])
    fenced = KafkaError(KafkaError._FENCED, "fenced by a newer instance", fatal=True)
    turns.producer.fail["commit"] = fenced
    turns.interval()
    assert turns.renewed == 1
    assert turns.source.position(P0) == 0  # rewound
    assert turns.metrics.transactions.labels("handle", "aborted")._value.get() == 1
    turns.poller.turn()
    turns.finish([0, 1])
    turns.interval()
    assert turns.producer.outputs() == [b"out-0-0", b"out-0-1"]
    assert turns.source.committed[P0] == 2
    turns.append(1)
    turns.poller.turn()
    turns.finish([2])
    turns.producer.fail["commit"] = fenced
    with pytest.raises(TransactionFencedError, match="its transactional producer was fenced"):
        turns.interval()
    assert turns.renewed == 1


def test_a_fatal_error_that_is_no_fence_is_renewed_every_time() -> None:
    """The transaction coordinator's node died while it led an output partition: the abort
    ends in a fatal INVALID_TXN_STATE (tests/faults/test_cluster3.py), twice within a minute
    when two nodes die one after the other. No other process has this transactional.id, so
    the handler carries on with a fresh producer each time instead of stopping."""
    turns = EosTurns(renewable=True)
    invalid = KafkaError(KafkaError.INVALID_TXN_STATE, "Failed to end transaction", fatal=True)
    for offset in range(3):
        turns.append(1)
        turns.poller.turn()
        turns.finish([offset])
        turns.producer.fail["commit"] = abortable("records timed out: their leader died")
        turns.producer.fail["abort"] = invalid
        turns.interval()
        assert turns.renewed == offset + 1
        assert turns.source.position(P0) == offset  # rewound
        turns.poller.turn()
        turns.finish([offset])
        turns.interval()
    assert turns.producer.outputs() == [b"out-0-0", b"out-0-1", b"out-0-2"]


def test_a_send_offsets_stuck_past_its_timeout_gives_the_producer_up() -> None:
    """librdkafka#5456/#5511: send_offsets_to_transaction blocked past its timeout after the
    group coordinator's node was killed (tests/faults/test_cluster3.py). Past api_timeout +
    STUCK_MARGIN the poll thread goes on: a fresh producer, the partitions rewound, the work
    redone once; the stuck call is left on its own thread."""
    turns = EosTurns(renewable=True)
    release = threading.Event()
    real = turns.producer.send_offsets_to_transaction
    stuck = [True]

    def send_offsets(positions: list[TopicPartition], metadata: Any, timeout: float = -1) -> None:
        if stuck:
            stuck.clear()
            release.wait(30)  # as librdkafka, deaf to `timeout`
            return
        real(positions, metadata, timeout)

    turns.producer.send_offsets_to_transaction = send_offsets  # type: ignore[method-assign]
    try:
        turns.append(2)
        turns.poller.turn()
        turns.finish([0, 1])
        started = time.monotonic()
        turns.interval()
        waited = time.monotonic() - started
        assert turns.renewed == 1
        assert 1.0 + STUCK_MARGIN - 0.5 < waited < 1.0 + STUCK_MARGIN + 3  # api_timeout=1.0
        assert turns.source.position(P0) == 0  # rewound
        turns.poller.turn()
        turns.finish([0, 1])
        turns.interval()
        assert turns.producer.outputs() == [b"out-0-0", b"out-0-1"]
    finally:
        release.set()

"""The executors and the failure path, with no broker: the worker pool (def handlers) and the
event loop (async def handlers), each with the same tests. Every message submitted is
reported exactly once, whatever revokes happen meanwhile."""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any

import pytest
from structlog.testing import capture_logs

from kafkaworker import Backoff, BatchPolicy, ConfigError, DeadLetter, Message
from kafkaworker.handlers import HandlerSpec
from kafkaworker.observability.metrics import Metrics
from kafkaworker.runtime.clock import SYSTEM_CLOCK, Clock, ManualClock
from kafkaworker.runtime.execute.attempts import AttemptObserver, Attempts
from kafkaworker.runtime.execute.batches import BatchRunner
from kafkaworker.runtime.execute.core import SLOW_HANDLER, ExecutorCore
from kafkaworker.runtime.execute.coroutines import AsyncPool
from kafkaworker.runtime.execute.event_loop import EventLoopThread
from kafkaworker.runtime.execute.outputs import FailureRecords, Outputs
from kafkaworker.runtime.execute.threads import WorkerPool
from kafkaworker.runtime.failures.policy import Decision, FailurePolicy
from kafkaworker.runtime.handoff import Completion, CompletionQueue, Executor, Outcome
from kafkaworker.runtime.poll.partitions import PartitionState
from kafkaworker.testing.producer import MemoryProducer
from tests.support import as_kind
from tests.unit.runtime_support import messages, outcomes, reports, spec_for

FINISHED, NOT_FINISHED = Outcome.FINISHED, Outcome.NOT_FINISHED


class TransientError(Exception):
    pass


@contextmanager
def pool_for(
    spec: HandlerSpec,
    *,
    observers: Sequence[AttemptObserver] = (),
    producer: MemoryProducer | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> Iterator[tuple[Executor, CompletionQueue]]:
    """The executor the runtime gives `spec` (the composition root's wiring): worker threads,
    or coroutines on a loop. Its outputs and DLQ records go to a MemoryProducer."""
    completions: CompletionQueue = queue.SimpleQueue()
    metrics = Metrics()
    records = FailureRecords(spec.dlq, group="svc", handler=spec.name) if spec.dlq else None
    policy = FailurePolicy(spec, can_publish=records is not None)
    attempts = Attempts(spec, policy, metrics=metrics, records=records)
    attempts.observers.extend(observers)
    outputs = Outputs(
        producer or MemoryProducer(),
        topic=spec.output,
        codec=spec.value_codec(),
        produce_timeout=5,
        write_timeout=5,
    )
    batches = BatchRunner(spec, attempts, metrics=metrics) if spec.batch else None
    core = ExecutorCore(spec, attempts, completions, metrics=metrics, batches=batches, clock=clock)
    loop = EventLoopThread().start() if spec.is_async else None
    pool: Executor
    if loop is not None:
        pool = AsyncPool(core, loop=loop, outputs=outputs)
    else:
        pool = WorkerPool(core, name="test", outputs=outputs)
    attempts.resubmit = pool.submit
    pool.start()
    try:
        yield pool, completions
    finally:
        pool.close(timeout=5)
        if loop is not None:
            loop.close()


def after_queued_callbacks(pool: Executor) -> None:
    """Wait until the async pool's loop has run what was scheduled on it so far (a cancel)."""
    assert isinstance(pool, AsyncPool)
    pool._loop_thread.run(asyncio.sleep(0), 5)


class Observed:
    """An AttemptObserver that sets events."""

    def __init__(self) -> None:
        self.failed_once = threading.Event()
        self.left_unacked = threading.Event()

    def failed(self, msg: Message[Any], error: BaseException, decision: Decision) -> None:
        self.failed_once.set()

    def awaiting_ack(self, msg: Message[Any]) -> None:
        self.left_unacked.set()

    def reported(self, completions: list[Completion]) -> None:
        pass


def collect(completions: CompletionQueue, expected: int) -> list[Completion]:
    found: list[Completion] = []
    while sum(len(c.offsets) for c in found) < expected:
        got = reports(completions, timeout=10)
        assert got, f"only {sum(len(c.offsets) for c in found)} of {expected} reported"
        found += got
    return found


def test_every_message_is_reported_exactly_once_under_revoke(kind: str) -> None:
    gate = threading.Event()
    entered = threading.Event()
    handled: list[tuple[int, int]] = []

    def handle(msg: Message[Any]) -> None:
        if msg.partition == 1 and msg.offset == 0:
            entered.set()
            assert gate.wait(10)
        handled.append((msg.partition, msg.offset))

    spec = spec_for(as_kind(kind, handle), concurrency=8, ordering="key")
    states = [PartitionState("t", p) for p in range(4)]
    with pool_for(spec) as (pool, completions):
        submitted = 0
        for state in states:
            batch = messages(state, 200, keys=[b"k%d" % (i % 5) for i in range(200)])
            pool.submit([(state.lease, batch)])
            submitted += len(batch)
        assert entered.wait(10)
        dropped = pool.revoke([s.lease for s in states[1:3]])  # partition 1 has a handler running
        gate.set()
        found = collect(completions, submitted - len(dropped))
    reported = outcomes(found)
    dropped_keys = [(m.partition, m.offset) for m in dropped]
    # Exactly once: reported or handed back as dropped, never both, never twice.
    assert Counter([*reported, *dropped_keys]) == Counter(
        (s.partition, o) for s in states for o in range(200)
    )
    assert all(len(o) == 1 for o in reported.values())
    assert {p for p, _ in dropped_keys} <= {1, 2}
    # Partitions 0 and 3 were never revoked: all finished. The running message of the
    # revoked partition 1 finished too; the rest of 1 and 2 is given up.
    for (partition, offset), [outcome] in reported.items():
        if partition in (0, 3) or (partition, offset) == (1, 0):
            assert outcome is Outcome.FINISHED
        else:
            assert outcome in (Outcome.FINISHED, Outcome.NOT_FINISHED)
    assert set(handled) == {k for k, [o] in reported.items() if o is Outcome.FINISHED}


def test_a_revoke_cuts_a_retry_backoff_short_and_gives_the_message_up(kind: str) -> None:
    failing = threading.Event()

    def handle(msg: Message[Any]) -> None:
        failing.set()
        raise TransientError("down")

    spec = spec_for(
        as_kind(kind, handle), retries=5, backoff=Backoff(initial=60, max=60, jitter="none")
    )
    state = PartitionState("t", 0)
    with pool_for(spec) as (pool, completions):
        pool.submit([(state.lease, messages(state, 1))])
        assert failing.wait(10)
        pool.revoke([state.lease])
        [completion] = reports(completions, timeout=5)
    assert completion.outcome is Outcome.NOT_FINISHED


def test_a_manual_ack_message_is_reported_once_whoever_acks(kind: str) -> None:
    received: queue.SimpleQueue[Message[Any]] = queue.SimpleQueue()
    spec = spec_for(as_kind(kind, received.put), ack="manual", concurrency=4)
    state = PartitionState("t", 0)
    with pool_for(spec) as (pool, completions):
        pool.submit([(state.lease, messages(state, 50))])
        handed = [received.get(timeout=5) for _ in range(50)]
        threads = [threading.Thread(target=lambda: [m.ack() for m in handed]) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        found = collect(completions, 50)
    assert {k: o for k, o in outcomes(found).items()} == {
        (0, offset): [Outcome.FINISHED] for offset in range(50)
    }


def test_a_mixed_batch_stops_waiting_when_any_of_its_partitions_is_revoked(kind: str) -> None:
    """With ordering="none" a batch mixes partitions: its backoff must end when any of them
    is revoked, not only the first message's (it used to wait out the whole backoff)."""
    calls: queue.SimpleQueue[list[tuple[int, int]]] = queue.SimpleQueue()

    def store(batch: list[Message[Any]]) -> None:
        calls.put([(m.partition, m.offset) for m in batch])
        raise TransientError("the database is down")

    spec = spec_for(
        as_kind(kind, store),
        ordering="none",
        concurrency=1,
        batch=BatchPolicy(max_size=10, max_wait=0),
        retries=5,
        backoff=Backoff(initial=60, multiplier=1, max=60, jitter="none"),
    )
    first, second = PartitionState("t", 0), PartitionState("t", 1)
    with pool_for(spec) as (pool, completions):
        pool.submit([(first.lease, messages(first, 2)), (second.lease, messages(second, 2))])
        assert calls.get(timeout=5) == [(0, 0), (0, 1), (1, 0), (1, 1)]
        pool.revoke([second.lease])  # not the first message's partition
        # Within seconds, not the 60 s backoff: the second call runs without partition 1.
        assert calls.get(timeout=5) == [(0, 0), (0, 1)]
        pool.revoke([first.lease])
        found = collect(completions, 4)
    assert outcomes(found) == {k: [Outcome.NOT_FINISHED] for k in [(0, 0), (0, 1), (1, 0), (1, 1)]}


def test_nack_takes_the_failure_path_during_the_call_and_after_it(kind: str) -> None:
    """A nack during the handler call fails that call; one after it returned runs the
    failure path then. Either way: retried with backoff, and past the retries handled as
    spent (here: skipped), reported once."""
    calls: list[tuple[int, int]] = []
    later: queue.SimpleQueue[Message[Any]] = queue.SimpleQueue()

    def handle(msg: Message[Any]) -> None:
        calls.append((msg.offset, msg.attempt))
        if msg.offset == 0:
            msg.nack(ValueError("rejected in the call"))
        elif msg.offset == 1:
            later.put(msg)  # nacked after the call returned
        else:
            msg.ack()

    spec = spec_for(
        as_kind(kind, handle),
        ack="manual",
        retries=2,
        backoff=Backoff(initial=0, max=0),
        on_exhausted="skip",
    )
    state = PartitionState("t", 0)
    with pool_for(spec) as (pool, completions):
        pool.submit([(state.lease, messages(state, 3))])
        for _ in range(3):  # the first call and two retries, each nacked after returning
            later.get(timeout=5).nack()
        found = collect(completions, 3)
    assert outcomes(found) == {(0, o): [Outcome.FINISHED] for o in range(3)}
    assert sorted(calls) == [(0, 1), (0, 2), (0, 3), (1, 1), (1, 2), (1, 3), (2, 1)]


def test_nack_without_manual_ack_is_a_one_line_error() -> None:
    [msg] = messages(PartitionState("t", 0), 1)
    with pytest.raises(ConfigError) as raised:
        msg.nack()
    assert "\n" not in str(raised.value)
    assert "ack='manual'" in str(raised.value)
    built: Message[Any] = Message("t", {"id": 1})  # built by hand in a user's unit test
    built.nack(ValueError("no"))
    assert isinstance(built.nacked, ValueError)


def test_a_cancelled_error_raised_by_an_async_handler_is_its_error_not_a_cancel() -> None:
    """A handler that awaited a future something else cancelled raises CancelledError while
    its task is not being cancelled: the failure path retries it, and the rest of its chunk
    runs (it used to be given up silently, and its partition never committed past it)."""
    calls: list[tuple[int, int]] = []

    async def handle(msg: Message[Any]) -> None:
        calls.append((msg.offset, msg.attempt))
        if msg.offset == 1 and msg.attempt < 3:  # the first call, and the first retry
            cancelled = asyncio.get_running_loop().create_future()
            cancelled.cancel()
            await cancelled

    spec = spec_for(handle, retries=2, backoff=Backoff(initial=0, max=0))
    state = PartitionState("t", 0)
    with pool_for(spec) as (pool, completions):
        pool.submit([(state.lease, messages(state, 3))])
        found = collect(completions, 3)
    assert outcomes(found) == {(0, offset): [FINISHED] for offset in range(3)}
    assert calls == [(0, 1), (1, 1), (1, 2), (1, 3), (2, 1)]


def test_a_cancel_leaves_a_batch_alone_that_holds_a_partition_still_assigned() -> None:
    """A cooperative rebalance revokes some partitions only; a batch of ordering="none" that
    mixes a revoked one with one still assigned must finish, or the assigned partition's
    messages come back not finished and nothing ever delivers them again."""
    calls: queue.SimpleQueue[list[tuple[int, int]]] = queue.SimpleQueue()
    gate = threading.Event()
    cancelled = threading.Event()

    async def store(batch: list[Message[Any]]) -> None:
        calls.put([(m.partition, m.offset) for m in batch])
        try:
            await asyncio.to_thread(gate.wait, 10)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    spec = spec_for(
        store, ordering="none", concurrency=1, batch=BatchPolicy(max_size=10, max_wait=0)
    )
    first, second = PartitionState("t", 0), PartitionState("t", 1)
    try:
        with pool_for(spec) as (pool, completions):
            pool.submit([(first.lease, messages(first, 2)), (second.lease, messages(second, 2))])
            assert calls.get(timeout=5) == [(0, 0), (0, 1), (1, 0), (1, 1)]
            pool.revoke([second.lease])
            pool.cancel([second.lease])  # its revoke_timeout ran out
            after_queued_callbacks(pool)
            assert not cancelled.is_set()
            gate.set()
            found = collect(completions, 4)
    finally:
        gate.set()
    assert outcomes(found) == {k: [FINISHED] for k in [(0, 0), (0, 1), (1, 0), (1, 1)]}


def test_a_cancelled_batch_is_reported_not_finished_and_logged_as_a_cancel() -> None:
    entered = threading.Event()

    async def store(batch: list[Message[Any]]) -> None:
        entered.set()
        await asyncio.Event().wait()  # until cancelled

    spec = spec_for(store, batch=BatchPolicy(max_size=10, max_wait=0))
    state = PartitionState("t", 0)
    with capture_logs() as logs, pool_for(spec) as (pool, completions):
        pool.submit([(state.lease, messages(state, 3))])
        assert entered.wait(5)
        pool.revoke([state.lease])
        pool.cancel([state.lease])
        found = collect(completions, 3)
    assert outcomes(found) == {(0, offset): [NOT_FINISHED] for offset in range(3)}
    events = [entry["event"] for entry in logs]
    assert not [e for e in events if "failed to run the batch handler" in e]  # not an error
    [cancel] = [entry for entry in logs if "cancelled an async handler's work" in entry["event"]]
    assert (cancel["not_finished"], cancel["partitions"]) == (3, ["t[0]"])


def test_an_async_handler_with_outputs_reports_while_its_next_call_awaits() -> None:
    gate = threading.Event()

    async def handle(msg: Message[Any]) -> bytes:
        if msg.offset == 1:
            await asyncio.to_thread(gate.wait, 10)
        return b"out"

    state = PartitionState("t", 0)
    try:
        with pool_for(spec_for(handle, output="out")) as (pool, completions):
            pool.submit([(state.lease, messages(state, 2))])
            first = reports(completions, timeout=5)  # offset 1 is still awaiting
            gate.set()
            rest = collect(completions, 1)
    finally:
        gate.set()
    assert outcomes(first) == {(0, 0): [FINISHED]}
    assert outcomes(rest) == {(0, 1): [FINISHED]}


def test_a_dead_lettered_message_is_reported_before_a_long_call(kind: str) -> None:
    gate = threading.Event()

    def handle(msg: Message[Any]) -> None:
        if msg.offset == 0:
            time.sleep(SLOW_HANDLER * 5)  # slow: what is settled is reported before each call
            raise DeadLetter("bad")
        assert gate.wait(10)

    state = PartitionState("t", 0)
    try:
        with pool_for(spec_for(as_kind(kind, handle), dlq="t.dlq")) as (pool, completions):
            pool.submit([(state.lease, messages(state, 2))])
            first = reports(completions, timeout=5)  # offset 1 is still running
            gate.set()
            rest = collect(completions, 1)
    finally:
        gate.set()
    assert outcomes(first) == {(0, 0): [Outcome.DEAD_LETTERED]}
    assert outcomes(rest) == {(0, 1): [FINISHED]}


def test_a_manual_message_given_up_on_revoke_is_not_reported_again_by_its_ack(kind: str) -> None:
    received: queue.SimpleQueue[Message[Any]] = queue.SimpleQueue()
    gate = threading.Event()

    def handle(msg: Message[Any]) -> None:
        received.put(msg)
        if msg.offset == 1:
            assert gate.wait(10)

    spec = spec_for(as_kind(kind, handle), ack="manual", concurrency=1)
    state = PartitionState("t", 0)
    try:
        with pool_for(spec) as (pool, completions):
            pool.submit([(state.lease, messages(state, 2))])
            first = received.get(timeout=5)
            assert received.get(timeout=5).offset == 1  # the lane is busy with offset 1
            first.nack()  # handed back: queued behind offset 1
            assert pool.revoke([state.lease]) == [first]  # the poll thread reports it not finished
            first.ack()  # too late: it was reported
            assert completions.empty()
    finally:
        gate.set()


def test_a_nack_during_a_retry_backoff_does_not_hand_the_message_back_twice(kind: str) -> None:
    received: queue.SimpleQueue[Message[Any]] = queue.SimpleQueue()
    observed = Observed()
    spec = spec_for(
        as_kind(kind, received.put),
        ack="manual",
        retries=3,
        backoff=Backoff(initial=60, max=60, jitter="none"),
    )
    state = PartitionState("t", 0)
    with pool_for(spec, observers=[observed]) as (pool, completions):
        pool.submit([(state.lease, messages(state, 1))])
        msg = received.get(timeout=5)
        assert observed.left_unacked.wait(5)  # returned without acking it
        msg.nack()  # handed back: it runs the failure path, and waits out a 60 s backoff
        assert observed.failed_once.wait(5)
        msg.nack()  # ignored: it is being retried already
        assert pool.revoke([state.lease]) == []  # nothing queued to run it a second time
        found = collect(completions, 1)
    assert outcomes(found) == {(0, 0): [NOT_FINISHED]}


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_handler_p99_comes_from_the_calls_timed_one_by_one(kind: str) -> None:
    # Slow calls are timed one by one: the p99 is the slowest but 1% of them. Fast calls are
    # timed by the stretch of CLOCK_EVERY, but the first of a chunk: few samples, all fast.
    # The calls take their time on a manual clock: with real sleeps, a loaded machine made
    # two of the 2 ms calls take over 30 ms now and then (p99 0.24-0.26 s, 2026-12-07).
    clock = ManualClock()

    def handle(msg: Message[Any]) -> None:
        if msg.partition == 0:
            clock.advance(0.04 if msg.offset == 99 else 0.002)

    spec = spec_for(as_kind(kind, handle), concurrency=2, ordering="partition")
    slow, fast = PartitionState("t", 0), PartitionState("t", 1)
    with pool_for(spec, clock=clock) as (pool, completions):
        assert pool.handler_seconds_p99() is None  # no calls yet
        pool.submit([(fast.lease, messages(fast, 2000))])
        collect(completions, 2000)
        fast_p99 = pool.handler_seconds_p99()
        pool.submit([(slow.lease, messages(slow, 100))])
        collect(completions, 100)
        p99 = pool.handler_seconds_p99()
    assert fast_p99 is not None and fast_p99 < 0.001, fast_p99
    # 100 timed calls: the 99th is a 2 ms one, the 40 ms one is above it.
    assert p99 == pytest.approx(0.002), p99
    clock.advance(1.0)
    assert pool.handler_seconds_p99(window=0.5) is None  # nothing in the last half second


class AckedByTheTest(MemoryProducer):
    """A producer whose records the test acknowledges or fails by hand, later, as a broker
    would: each send's value and future, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: queue.SimpleQueue[tuple[Any, Future[Any]]] = queue.SimpleQueue()

    def send(self, topic: str, value: Any, **options: Any) -> Future[Any]:
        future: Future[Any] = Future()
        self.sent.put((value, future))
        return future

    def take(self, count: int) -> list[tuple[Any, Future[Any]]]:
        return [self.sent.get(timeout=5) for _ in range(count)]


def test_outputs_are_acknowledged_after_the_lane_ran_on_and_a_refused_one_runs_again_in_order() -> (
    None
):
    # A worker used to wait for each message's outputs before the next message of its lane:
    # `concurrency` messages per round trip. Now the lane runs on, each message is finished
    # once its outputs are acknowledged, and an output that fails runs its message again
    # with every later one of the lane, in order (as a replay after a crash would).
    calls: list[int] = []

    def handle(msg: Message[Any]) -> bytes:
        calls.append(msg.offset)
        return b"out-%d" % msg.offset

    spec = spec_for(
        handle,
        output="out",
        ordering="partition",
        retries=2,
        backoff=Backoff(initial=0.01, max=0.01, jitter="none"),
    )
    producer = AckedByTheTest()
    state = PartitionState("t", 0)
    with pool_for(spec, producer=producer) as (pool, completions):
        pool.submit([(state.lease, messages(state, 5))])
        first = producer.take(5)
        assert calls == [0, 1, 2, 3, 4]  # every call before any acknowledgement
        assert reports(completions, timeout=0.2) == []  # nothing finished before its ack
        for value, future in first:
            if value == b"out-1":
                future.set_exception(RuntimeError("Broker: Message size too large"))
            else:
                future.set_result(None)
        again = producer.take(4)
        assert [value for value, _ in again] == [b"out-1", b"out-2", b"out-3", b"out-4"]
        for _, future in again:
            future.set_result(None)
        found = collect(completions, 5)
    assert calls == [0, 1, 2, 3, 4, 1, 2, 3, 4]
    assert outcomes(found) == {(0, offset): [FINISHED] for offset in range(5)}


def test_outputs_not_yet_acknowledged_when_the_partition_is_revoked_are_not_finished() -> None:
    spec = spec_for(lambda msg: b"out", output="out", ordering="partition")
    producer = AckedByTheTest()
    state = PartitionState("t", 0)
    with pool_for(spec, producer=producer) as (pool, completions):
        pool.submit([(state.lease, messages(state, 3))])
        sent = producer.take(3)
        sent[0][1].set_result(None)
        pool.revoke([state.lease])
        for _, future in sent[1:]:
            future.set_exception(RuntimeError("Local: Message timed out"))
        found = collect(completions, 3)
    assert outcomes(found) == {(0, 0): [FINISHED], (0, 1): [NOT_FINISHED], (0, 2): [NOT_FINISHED]}


def test_outputs_acknowledged_by_the_time_of_a_revoke_are_finished_and_committed_by_it() -> None:
    # The next owner would run them again otherwise.
    gate = threading.Event()

    def handle(msg: Message[Any]) -> bytes:
        if msg.offset == 2:
            gate.wait(5)
        return b"out"

    spec = spec_for(handle, output="out", ordering="partition")
    producer = AckedByTheTest()
    state = PartitionState("t", 0)
    with pool_for(spec, producer=producer) as (pool, completions):
        pool.submit([(state.lease, messages(state, 3))])
        for _, future in producer.take(2):  # 0 and 1 ran; 2 is in its call
            future.set_result(None)
        pool.revoke([state.lease])
        gate.set()
        producer.take(1)[0][1].set_exception(RuntimeError("Local: Message timed out"))
        found = collect(completions, 3)
    assert outcomes(found) == {(0, 0): [FINISHED], (0, 1): [FINISHED], (0, 2): [NOT_FINISHED]}

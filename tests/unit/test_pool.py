"""The executors and the failure path, with no broker: the worker pool (def handlers) and the
event loop (async def handlers), each with the same tests. Every message submitted is
reported exactly once, whatever revokes happen meanwhile."""

from __future__ import annotations

import queue
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from kafkaworker import Backoff, BatchPolicy, ConfigError, Message
from kafkaworker.handlers import HandlerSpec
from kafkaworker.observability.metrics import Metrics
from kafkaworker.runtime.execute import Executor
from kafkaworker.runtime.execute.aio import AsyncPool
from kafkaworker.runtime.execute.attempts import Attempts
from kafkaworker.runtime.execute.batches import BatchRunner
from kafkaworker.runtime.execute.event_loop import EventLoopThread
from kafkaworker.runtime.execute.pool import WorkerPool
from kafkaworker.runtime.execute.revocations import Revocations
from kafkaworker.runtime.failures.policy import FailurePolicy
from kafkaworker.runtime.handoff import Completion, CompletionQueue, Outcome
from kafkaworker.runtime.poll.partitions import PartitionState
from tests.support import as_kind
from tests.unit.runtime_support import messages, outcomes, reports, spec_for


class TransientError(Exception):
    pass


@contextmanager
def pool_for(spec: HandlerSpec) -> Iterator[tuple[Executor, CompletionQueue]]:
    """The executor the runtime gives `spec`: worker threads, or coroutines on a loop."""
    completions: CompletionQueue = queue.SimpleQueue()
    metrics = Metrics()
    attempts = Attempts(spec, FailurePolicy(spec), completions, metrics=metrics)
    batches = BatchRunner(spec, attempts, completions, metrics=metrics) if spec.batch else None
    loop = EventLoopThread().start() if spec.is_async else None
    pool: Executor
    if loop is not None:
        pool = AsyncPool(spec, attempts, completions, loop=loop, metrics=metrics, batches=batches)
    else:
        pool = WorkerPool(
            spec,
            attempts,
            completions,
            name="test",
            revocations=Revocations(),
            metrics=metrics,
            batches=batches,
        )
    attempts.resubmit = pool.submit
    pool.start()
    try:
        yield pool, completions
    finally:
        pool.close(timeout=5)
        if loop is not None:
            loop.close()


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
            pool.submit([(state, batch)])
            submitted += len(batch)
        assert entered.wait(10)
        dropped = pool.revoke(states[1:3])  # partition 1 has a handler running
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
        pool.submit([(state, messages(state, 1))])
        assert failing.wait(10)
        pool.revoke([state])
        [completion] = reports(completions, timeout=5)
    assert completion.outcome is Outcome.NOT_FINISHED


def test_a_manual_ack_message_is_reported_once_whoever_acks(kind: str) -> None:
    received: queue.SimpleQueue[Message[Any]] = queue.SimpleQueue()
    spec = spec_for(as_kind(kind, received.put), ack="manual", concurrency=4)
    state = PartitionState("t", 0)
    with pool_for(spec) as (pool, completions):
        pool.submit([(state, messages(state, 50))])
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
        pool.submit([(first, messages(first, 2)), (second, messages(second, 2))])
        assert calls.get(timeout=5) == [(0, 0), (0, 1), (1, 0), (1, 1)]
        pool.revoke([second])  # not the first message's partition
        # Within seconds, not the 60 s backoff: the second call runs without partition 1.
        assert calls.get(timeout=5) == [(0, 0), (0, 1)]
        pool.revoke([first])
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
        pool.submit([(state, messages(state, 3))])
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

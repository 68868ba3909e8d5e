"""Delayed retry records: held until due, released in order, by a hand-moved clock."""

from __future__ import annotations

from typing import Any

from confluent_kafka import Message as Record

from kafkaworker import Message, headers
from kafkaworker.message import DispatchedMessage
from kafkaworker.runtime.clock import ManualClock
from kafkaworker.runtime.poll.delayed import DelayedRetries
from kafkaworker.runtime.poll.partitions import PartitionState
from kafkaworker.serialization import CODECS

TOPIC = "orders.retry.5s"


def run(state: PartitionState, *dues: int | None, attempts: int = 1) -> list[Message[Any]]:
    """Messages of the retry topic due at these times (ms; None: no due header)."""
    start = state.last_dispatched + 1
    offsets = list(range(start, start + len(dues)))
    state.last_dispatched = offsets[-1]
    records = [
        Record(
            topic=TOPIC,
            partition=state.partition,
            offset=offset,
            value=b"{}",
            headers=[(headers.ATTEMPTS, str(attempts).encode())]
            + ([(headers.RETRY_DUE, str(due).encode())] if due is not None else []),
        )
        for offset, due in zip(offsets, dues, strict=True)
    ]
    return DispatchedMessage.run_of(state.lease, records, offsets, CODECS["json"])


def offsets(messages: list[Message[Any]]) -> list[int]:
    return [m.offset for m in messages]


def test_due_records_pass_and_later_ones_are_held_behind_the_first_held() -> None:
    clock = ManualClock(wall=1000.0)  # 1,000,000 ms
    delayed = DelayedRetries([TOPIC], clock=clock)
    state = PartitionState(TOPIC, 0)
    # Due, not due, due (but behind a held one), no header (due: written by someone else).
    messages = run(state, 999_000, 1_005_000, 1_000_000, None)
    assert offsets(delayed.admit(state, messages)) == [0]
    assert delayed.holds(state) and delayed
    assert delayed.due() == []
    clock.advance(4.999)
    assert delayed.due() == []
    clock.advance(0.001)
    [(released_lease, released)] = delayed.due()
    assert released_lease is state.lease
    assert offsets(released) == [1, 2, 3]
    assert not delayed.holds(state) and not delayed


def test_a_run_fetched_while_records_are_held_waits_behind_them() -> None:
    clock = ManualClock(wall=1000.0)
    delayed = DelayedRetries([TOPIC], clock=clock)
    state = PartitionState(TOPIC, 0)
    assert delayed.admit(state, run(state, 1_010_000)) == []
    assert delayed.admit(state, run(state, 0)) == []  # long due, but behind offset 0
    clock.advance(10)
    [(_, released)] = delayed.due()
    assert offsets(released) == [0, 1]


def test_attempts_continue_from_the_header() -> None:
    delayed = DelayedRetries([TOPIC], clock=ManualClock(wall=1000.0))
    state = PartitionState(TOPIC, 0)
    [msg] = delayed.admit(state, run(state, 0, attempts=3))
    assert msg.attempt == 4


def test_partitions_are_held_and_released_independently_and_dropped_on_revoke() -> None:
    clock = ManualClock(wall=1000.0)
    delayed = DelayedRetries([TOPIC], clock=clock)
    first, second = PartitionState(TOPIC, 0), PartitionState(TOPIC, 1)
    delayed.admit(first, run(first, 1_001_000))
    delayed.admit(second, run(second, 1_002_000))
    clock.advance(1)
    assert [(s.partition.partition, offsets(m)) for s, m in delayed.due()] == [(0, [0])]
    assert delayed.holds(second)
    delayed.drop(second)  # revoked: the next owner fetches it again
    assert not delayed


def test_a_retry_record_is_never_due_before_its_delay_has_passed() -> None:
    # The due time is in whole milliseconds: rounded up, not truncated (a 2 s stage once ran
    # after 1.99990 s in CI).
    from kafkaworker.runtime.execute.outputs import FailureRecords  # noqa: PLC0415
    from kafkaworker.runtime.failures.retrytopics import Stage  # noqa: PLC0415

    clock = ManualClock(wall=1_700_000_000.0004)
    records = FailureRecords(None, group="g", handler="h", clock=clock)
    (failed,) = run(PartitionState("orders", 0), None)
    record = records.retry(failed, TimeoutError("slow"), Stage("orders", TOPIC, 2.0))
    due = int(dict(record.headers)[headers.RETRY_DUE] or b"")
    assert due / 1000 >= clock.time() + 2.0
    assert due == 1_700_000_002_001
    held = DelayedRetries([TOPIC], clock=clock)
    state = PartitionState(TOPIC, 0)
    assert held.admit(state, run(state, due)) == []
    clock.advance(2.0)  # 1 ms short of the due time
    assert held.due() == []
    clock.advance(0.001)
    assert [offsets(m) for _, m in held.due()] == [[0]]

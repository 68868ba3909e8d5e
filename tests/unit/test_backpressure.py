"""Backpressure decisions from counts and a hand-moved clock: no broker, no sleeping."""

from __future__ import annotations

from kafkaworker.runtime.clock import ManualClock
from kafkaworker.runtime.poll.backpressure import (
    PAUSE_AT_ONCE_FOR,
    WITHHOLD,
    WITHHOLD_BELOW,
    Backpressure,
)
from kafkaworker.runtime.poll.partitions import PartitionState

FAST = WITHHOLD_BELOW / 10
SLOW = WITHHOLD_BELOW * 10


def partition(index: int, outstanding: int = 0) -> PartitionState:
    state = PartitionState("t", index)
    fill(state, outstanding)
    return state


def fill(state: PartitionState, outstanding: int) -> None:
    """Make `outstanding` offsets fetched and not committable."""
    start = state.last_dispatched + 1
    state.offsets.add_run(list(range(start, start + outstanding)))
    state.last_dispatched = start + outstanding - 1


def drain(state: PartitionState, count: int) -> None:
    head = state.offsets.lowest_unfinished()
    assert head is not None
    state.offsets.finish_run(list(range(head, head + count)))
    state.offsets.advance()


def judge(bp: Backpressure, states: list[PartitionState], seconds: float) -> set[int]:
    """The partitions kept paused; applies the decision as the poll thread does."""
    paused = bp.limited(states, seconds)
    for state in states:
        state.paused = state in paused
    return {s.partition for s in paused}


def test_under_the_limits_nothing_is_paused_or_withheld() -> None:
    bp = Backpressure(100, 10, clock=ManualClock())
    states = [partition(0, 9), partition(1, 9)]
    assert judge(bp, states, SLOW) == set()
    assert not bp.withholding


def test_a_slow_handler_over_the_partition_limit_is_paused_at_once_and_resumed_at_half() -> None:
    bp = Backpressure(1000, 10, clock=ManualClock())
    busy, idle = partition(0, 10), partition(1, 3)
    assert judge(bp, [busy, idle], SLOW) == {0}
    assert not bp.withholding
    drain(busy, 4)  # 6 outstanding: still above half the limit
    assert judge(bp, [busy, idle], SLOW) == {0}
    drain(busy, 1)  # 5: half the limit
    assert judge(bp, [busy, idle], SLOW) == set()


def test_a_fast_handler_is_withheld_from_first_and_paused_only_if_that_did_not_help() -> None:
    clock = ManualClock()
    bp = Backpressure(1000, 10, clock=clock)
    state = partition(0, 10)
    assert judge(bp, [state], FAST) == set()
    assert bp.withholding and bp.withheld == 1
    clock.advance(WITHHOLD / 2)
    assert judge(bp, [state], FAST) == set()  # still withholding
    assert bp.withholding
    clock.advance(WITHHOLD / 2 + 0.001)
    assert judge(bp, [state], FAST) == {0}  # did not drain in time: paused
    assert not bp.withholding
    # ... and from then on paused at once when it is over its limit again.
    drain(state, 10)
    assert judge(bp, [state], FAST) == set()
    fill(state, 10)
    assert judge(bp, [state], FAST) == {0}
    assert bp.withheld == 1
    drain(state, 10)
    judge(bp, [state], FAST)
    clock.advance(PAUSE_AT_ONCE_FOR)
    fill(state, 10)
    assert judge(bp, [state], FAST) == set()  # withheld from again after the 30 s
    assert bp.withheld == 2


def test_a_fast_handler_that_drains_while_withheld_is_never_paused() -> None:
    clock = ManualClock()
    bp = Backpressure(1000, 10, clock=clock)
    state = partition(0, 10)
    assert judge(bp, [state], FAST) == set()
    assert bp.withholding
    clock.advance(WITHHOLD / 2)
    drain(state, 6)
    assert judge(bp, [state], FAST) == set()
    assert not bp.withholding


def test_over_the_handler_budget_only_partitions_at_their_fair_share_pause() -> None:
    bp = Backpressure(40, 1000, clock=ManualClock())
    states = [partition(0, 25), partition(1, 10), partition(2, 3), partition(3, 2)]
    assert bp.over_budget is False
    # 40 outstanding: over budget; the fair share is 40 / 4 = 10.
    assert judge(bp, states, SLOW) == {0, 1}
    assert bp.over_budget
    drain(states[0], 20)  # 20 outstanding in all: half the budget
    assert judge(bp, states, SLOW) == set()
    assert not bp.over_budget


def test_over_budget_lasts_until_half_the_budget_for_partitions_at_their_share() -> None:
    bp = Backpressure(40, 1000, clock=ManualClock())
    big, small = partition(0, 30), partition(1, 10)
    assert judge(bp, [big, small], SLOW) == {0}  # fair share: 20
    drain(big, 9)  # 31 in all, under the budget but above half: still over budget
    assert judge(bp, [big, small], SLOW) == {0}
    assert bp.over_budget
    drain(big, 2)  # 19: under its share, resumed while the others drain
    assert judge(bp, [big, small], SLOW) == set()
    assert bp.over_budget
    drain(small, 10)
    judge(bp, [big, small], SLOW)
    assert not bp.over_budget


def test_a_forgotten_partition_leaves_nothing_behind() -> None:
    clock = ManualClock()
    bp = Backpressure(1000, 10, clock=clock)
    old = partition(0, 10)
    judge(bp, [old], FAST)
    clock.advance(WITHHOLD)
    assert judge(bp, [old], FAST) == {0}
    bp.forget([old])
    # The same partition assigned again is a new state: judged afresh (withheld from first).
    again = partition(0, 10)
    assert judge(bp, [again], FAST) == set()
    assert bp.withholding

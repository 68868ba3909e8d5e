"""CircuitBreaker: opens on a high dead-letter share, closes after its cooldown."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from kafkaworker.runtime.failures.policy import CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def breaker(clock: Clock) -> CircuitBreaker:
    return CircuitBreaker(threshold=0.5, window=10, min_messages=4, cooldown=30, clock=clock)


def test_no_verdict_on_fewer_than_min_messages() -> None:
    b = breaker(Clock())
    for _ in range(3):
        b.record(True)
    assert b.update() is None
    assert not b.open


def test_opens_when_the_share_exceeds_the_threshold_and_not_at_it() -> None:
    b = breaker(Clock())
    for dead in (True, False, True, False):
        b.record(dead)
    assert b.update() is None  # 0.5 is not more than 0.5
    b.record(True)
    assert b.update() == "opened"
    assert b.open


def test_the_window_slides() -> None:
    b = breaker(Clock())
    for _ in range(10):
        b.record(True)
    for _ in range(10):
        b.record(False)
    assert b.share == 0.0
    assert b.update() is None


def test_closes_after_the_cooldown_with_an_empty_window() -> None:
    clock = Clock()
    b = breaker(clock)
    for _ in range(5):
        b.record(True)
    assert b.update() == "opened"
    clock.now += 29.9
    assert b.update() is None
    clock.now += 0.2
    assert b.update() == "closed"
    assert not b.open
    assert b.share == 0.0
    b.record(True)
    assert b.update() is None  # fresh evidence needed before it opens again


@given(st.lists(st.tuples(st.booleans(), st.integers(min_value=1, max_value=30)), max_size=40))
def test_recording_a_run_counts_as_its_messages_one_by_one(runs: list[tuple[bool, int]]) -> None:
    """Workers report runs of finished messages; the window must not care."""
    by_run, one_by_one = _breaker(), _breaker()
    for dead, count in runs:
        by_run.record(dead, count)
        for _ in range(count):
            one_by_one.record(dead)
        assert by_run.share == one_by_one.share


def _breaker() -> CircuitBreaker:
    return CircuitBreaker(threshold=0.5, window=20, min_messages=5, cooldown=1.0)

"""CircuitBreaker: opens on a high dead-letter share, closes after its cooldown."""

from __future__ import annotations

from kafkaworker.runtime.breaker import CircuitBreaker


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

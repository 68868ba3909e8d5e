"""Backoff: exponential, capped, jittered within bounds."""

from __future__ import annotations

import random

import pytest

from kafkaworker import Backoff, DeadLetter, DeserializationError, Skip
from kafkaworker.runtime.failures.policy import is_fatal


def test_ceiling_grows_exponentially_up_to_max() -> None:
    backoff = Backoff(initial=0.5, multiplier=2.0, max=30.0)
    assert [backoff.ceiling(n) for n in range(1, 9)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert backoff.ceiling(10_000) == 30.0


@pytest.mark.parametrize(("jitter", "low"), [("full", 0.0), ("equal", 0.5), ("none", 1.0)])
def test_jittered_delays_stay_within_their_bounds(jitter: str, low: float) -> None:
    backoff = Backoff(initial=1.0, multiplier=2.0, max=8.0, jitter=jitter)  # type: ignore[arg-type]
    rng = random.Random(7)
    for retry in range(1, 8):
        ceiling = backoff.ceiling(retry)
        delays = [backoff.delay(retry, rng) for _ in range(200)]
        assert all(low * ceiling <= d <= ceiling for d in delays)
        if jitter != "none":
            assert len(set(delays)) > 100  # really jittered


def test_fatal_errors_are_the_ones_no_retry_can_fix() -> None:
    assert is_fatal(DeserializationError("x"))
    assert is_fatal(DeadLetter("x"))
    assert is_fatal(Skip("x"))
    assert not is_fatal(TimeoutError())


def test_pydantic_validation_errors_are_fatal() -> None:
    from pydantic import BaseModel, ValidationError  # noqa: PLC0415

    class Order(BaseModel):
        id: int

    with pytest.raises(ValidationError) as error:
        Order.model_validate({"id": "seven"})
    assert is_fatal(error.value)

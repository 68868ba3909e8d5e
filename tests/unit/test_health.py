"""Liveness and readiness from the poll threads' gauges, one process or a supervisor's N."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge

from kafkaworker.observability.health import evaluate


def registry_with(
    ready: dict[tuple[str, str], float], beats: dict[tuple[str, str], float]
) -> CollectorRegistry:
    registry = CollectorRegistry()
    labels = ["pid", "handler"]
    ready_gauge = Gauge("kafkaworker_ready", "", labels, registry=registry)
    beat_gauge = Gauge(
        "kafkaworker_poll_heartbeat_timestamp_seconds", "", labels, registry=registry
    )
    for key, value in ready.items():
        ready_gauge.labels(*key).set(value)
    for key, value in beats.items():
        beat_gauge.labels(*key).set(value)
    return registry


def test_fresh_and_joined_is_live_and_ready() -> None:
    health = evaluate(
        registry_with({("1", "a"): 1, ("2", "a"): 1}, {("1", "a"): 99, ("2", "a"): 100}),
        stale_after=10,
        processes=2,
        now=100,
    )
    assert (health.live, health.ready) == (True, True)
    assert health.detail == {"handlers": 2, "processes": 2}


def test_a_stale_poll_thread_is_neither_live_nor_ready() -> None:
    health = evaluate(registry_with({("1", "a"): 1}, {("1", "a"): 50}), stale_after=10, now=100)
    assert (health.live, health.ready) == (False, False)
    assert health.detail["stale_poll_threads_seconds"] == {"a@1": 50.0}


def test_a_handler_not_joined_or_a_missing_process_is_not_ready() -> None:
    not_joined = evaluate(
        registry_with({("1", "a"): 1, ("1", "b"): 0}, {("1", "a"): 100}), stale_after=10, now=100
    )
    assert (not_joined.live, not_joined.ready) == (True, False)
    assert not_joined.detail["not_ready"] == ["b@1"]
    one_of_two = evaluate(
        registry_with({("1", "a"): 1}, {("1", "a"): 100}), stale_after=10, processes=2, now=100
    )
    assert (one_of_two.live, one_of_two.ready) == (True, False)
    assert one_of_two.detail["processes_expected"] == 2


def test_nothing_reported_yet_is_not_ready() -> None:
    health = evaluate(CollectorRegistry(), stale_after=10, now=100)
    assert (health.live, health.ready) == (True, False)


def test_a_silent_broker_is_told_in_the_body_without_failing_either_probe() -> None:
    registry = registry_with({("1", "a"): 1, ("1", "b"): 1}, {("1", "a"): 99, ("1", "b"): 99})
    silence = Gauge("kafkaworker_broker_silence_seconds", "", ["pid", "handler"], registry=registry)
    silence.labels("1", "a").set(21.0)
    silence.labels("1", "b").set(0.4)  # an answer on its way: nothing to tell
    health = evaluate(registry, stale_after=10, now=100)
    assert (health.live, health.ready) == (True, True)
    assert health.detail["brokers_not_answering_seconds"] == {"a@1": 21.0}

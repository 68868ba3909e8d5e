"""Retry topic names and stages."""

from __future__ import annotations

from kafkaworker.runtime.failures.retrytopics import RetryRoutes, stage_name


def test_stage_names() -> None:
    assert stage_name("orders", 5) == "orders.retry.5s"
    assert stage_name("orders", 0.5) == "orders.retry.0.5s"
    assert stage_name("orders", 600.0) == "orders.retry.600s"


def test_each_topic_leads_to_its_next_stage_and_the_last_to_none() -> None:
    routes = RetryRoutes(["a", "b"], [5, 60])
    first = routes.next_stage("a")
    assert first is not None and (first.topic, first.delay) == ("a.retry.5s", 5)
    second = routes.next_stage("a.retry.5s")
    assert second is not None and (second.topic, second.source) == ("a.retry.60s", "a")
    assert routes.next_stage("a.retry.60s") is None
    assert routes.next_stage("b.retry.5s") is not None
    assert routes.retry_topics == {"a.retry.5s", "a.retry.60s", "b.retry.5s", "b.retry.60s"}
    assert RetryRoutes(["a"], []).next_stage("a") is None

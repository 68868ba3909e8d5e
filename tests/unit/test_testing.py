"""kafkaworker.testing.TestClient: an app's handlers on the real execution path, no broker,
virtual time. Each behaviour for a def handler and an async def one."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from kafkaworker import App, Backoff, BatchPolicy, ConfigError, DeadLetter, Message, Skip
from kafkaworker.testing import TestClient, broker, pytest_plugin
from kafkaworker.testing.broker import BrokerError
from tests.support import of_kind


class Order(BaseModel):
    id: int


class Down(Exception):  # noqa: N818 - a service's own error name
    pass


def test_a_finished_message_with_its_outputs(kind: str) -> None:
    app = App("svc")

    @app.handler("orders", output="accepted")
    @of_kind(kind)
    def accept(order: Order) -> list[dict[str, Any]]:
        return [{"id": order.id}, {"id": order.id, "copy": True}]

    with TestClient(app) as client:
        delivery = client.send("orders", {"id": 7}, key="k")
    assert (delivery.outcome, delivery.attempts, delivery.errors) == ("finished", 1, [])
    assert [(r.topic, r.key, r.json()) for r in delivery.records] == [
        ("accepted", b"k", {"id": 7}),
        ("accepted", b"k", {"id": 7, "copy": True}),
    ]


def test_hour_long_backoffs_take_no_time_then_the_dlq(kind: str) -> None:
    app = App("svc")

    @app.handler(
        "orders", retries=4, backoff=Backoff(initial=3600, max=3600, jitter="none"), dlq="dlq"
    )
    @of_kind(kind)
    def handle(msg: Message[Any]) -> None:
        raise Down("still down")

    started = time.monotonic()
    with TestClient(app) as client:
        before = client.clock.time()
        delivery = client.send("orders", {"id": 1})
        # Virtual: the four backoffs skipped, plus the real time the calls took (a loaded
        # machine took 16 ms of it once: the tolerance is a second, not a relative 1e-6).
        assert client.clock.time() - before == pytest.approx(4 * 3600, abs=1.0)
    assert time.monotonic() - started < 10  # not four hours
    assert (delivery.outcome, delivery.attempts) == ("dead_lettered", 5)
    assert [type(e) for e in delivery.errors] == [Down] * 5
    [dead] = client.records("dlq")
    assert (dead.header("kw.attempts"), dead.header("kw.error.type")) == (
        b"5",
        b"tests.unit.test_testing.Down",
    )


def test_retry_topics_fed_back_run_at_their_due_time_then_the_dlq(kind: str) -> None:
    app = App("svc")
    attempts: list[int] = []

    @app.handler("pay", retry_topics=[5, 60], dlq="pay.dlq")
    @of_kind(kind)
    def pay(msg: Message[Any]) -> None:
        attempts.append(msg.attempt)
        raise Down("gateway")

    with TestClient(app) as client:
        first = client.send("pay", {"id": 1})
        assert (first.outcome, [r.topic for r in first.records]) == (
            "retry_topic",
            ["pay.retry.5s"],
        )
        second = client.send_record(first.records[0])
        assert [r.topic for r in second.records] == ["pay.retry.60s"]
        third = client.send_record(second.records[0])
    assert third.outcome == "dead_lettered"
    assert attempts == [1, 2, 3]
    assert third.records[0].header("kw.original.topic") == b"pay"


def test_skips_stalls_and_undecodable_payloads(kind: str) -> None:
    app = App("svc")

    @app.handler("skips")
    @of_kind(kind)
    def skips(msg: Message[Any]) -> None:
        raise Skip("duplicate")

    @app.handler("stalls", retries=1, backoff=Backoff(initial=0, max=0.01))
    @of_kind(kind)
    def stalls(msg: Message[Any]) -> None:
        raise Down("no DLQ to go to")

    @app.handler("typed", dlq="typed.dlq")
    @of_kind(kind)
    def typed(order: Order) -> None:
        pass

    with TestClient(app) as client:
        assert client.send("skips", {}).outcome == "skipped"
        stalled = client.send("stalls", {})
        assert (stalled.outcome, stalled.attempts) == ("stalled", 2)
        bad = client.send("typed", raw_value=b"{not json")
    assert (bad.outcome, bad.attempts) == ("dead_lettered", 1)


def test_manual_acks_nacks_and_a_message_left_unacked(kind: str) -> None:
    app = App("svc")

    @app.handler("jobs", ack="manual", retries=1, backoff=Backoff(initial=0, max=0), dlq="dlq")
    @of_kind(kind)
    def job(msg: Message[Any]) -> None:
        action = msg.value["do"]
        if action == "ack":
            msg.ack()
        elif action == "nack":
            msg.nack(Down("rejected"))

    with TestClient(app) as client:
        assert client.send("jobs", {"do": "ack"}).outcome == "finished"
        nacked = client.send("jobs", {"do": "nack"})
        assert (nacked.outcome, nacked.attempts) == ("dead_lettered", 2)
        assert client.send("jobs", {"do": "nothing"}).outcome == "awaiting_ack"


def test_batches_settings_overrides_and_hooks(kind: str) -> None:
    app = App("svc")
    batches: list[int] = []
    hooks: list[str] = []

    @app.on_startup
    async def opened() -> None:
        hooks.append("startup")

    @app.on_shutdown
    def closed() -> None:
        hooks.append("shutdown")

    @app.handler("rows", batch=BatchPolicy(max_size=10, max_wait=0))
    @of_kind(kind)
    def store(messages: list[Message[Any]]) -> None:
        batches.append(len(messages))
        if messages[0].value.get("bad"):
            raise DeadLetter("constraint")

    overrides = {"handlers": {"store": {"dlq": "rows.dlq"}}}
    with TestClient(app, settings=overrides) as client:
        assert hooks == ["startup"]
        assert client.send("rows", {"id": 1}).outcome == "finished"
        assert client.send("rows", {"bad": True}).outcome == "dead_lettered"
    assert batches == [1, 1]
    assert hooks == ["startup", "shutdown"]


def test_unknown_topics_and_ambiguous_sends_are_one_line_errors() -> None:
    app = App("svc")
    app.handler("orders", name="a")(lambda msg: None)
    app.handler("orders", name="b", group="other")(lambda msg: None)
    with TestClient(app) as client:
        with pytest.raises(ConfigError, match=r"no handler of app 'svc' consumes 'nope'.*a \("):
            client.send("nope", {})
        with pytest.raises(ConfigError, match="consumed by handlers a, b: pass handler="):
            client.send("orders", {})
        assert client.send("orders", {}, handler="b").handler == "b"


def test_async_handlers_really_run_on_a_loop() -> None:
    app = App("svc")
    loops: list[Any] = []

    @app.handler("t")
    async def handle(msg: Message[Any]) -> None:
        await asyncio.sleep(0)
        loops.append(asyncio.get_running_loop())

    with TestClient(app) as client:
        client.send("t", {})
        client.send("t", {})
    assert len(loops) == 2 and loops[0] is loops[1]


def test_two_nacks_in_one_call_fail_that_call_only(kind: str) -> None:
    app = App("svc")

    @app.handler("jobs", ack="manual", retries=2, backoff=Backoff(initial=0, max=0))
    @of_kind(kind)
    def job(msg: Message[Any]) -> None:
        if msg.attempt == 1:
            msg.nack(Down("first"))
            msg.nack(Down("second"))

    with TestClient(app) as client:
        delivery = client.send("jobs", {})
    # The retry returned without acking: it did not fail on the first call's second nack.
    assert (delivery.outcome, delivery.attempts) == ("awaiting_ack", 2)
    assert [str(e) for e in delivery.errors] == ["first"]


def test_a_message_left_unacked_or_stalled_does_not_hold_later_sends_back(kind: str) -> None:
    """Either holds its partition's commit back; a later message is settled all the same."""
    app = App("svc")

    @app.handler("jobs", ack="manual")
    @of_kind(kind)
    def job(msg: Message[Any]) -> None:
        if msg.value["ack"]:
            msg.ack()

    @app.handler("keyed", ordering="key", retries=0, backoff=Backoff(initial=0, max=0.01))
    @of_kind(kind)
    def keyed(msg: Message[Any]) -> None:
        if msg.value["fail"]:
            raise Down("and no DLQ to go to")

    with TestClient(app, timeout=3) as client:
        assert client.send("jobs", {"ack": False}).outcome == "awaiting_ack"
        assert client.send("jobs", {"ack": True}).outcome == "finished"
        assert client.send("keyed", {"fail": True}, key="a").outcome == "stalled"
        assert client.send("keyed", {"fail": False}, key="b").outcome == "finished"


def test_a_send_while_the_breaker_is_open_runs_after_its_cooldown_in_virtual_time(
    kind: str,
) -> None:
    app = App("svc")

    @app.handler("orders", dlq="orders.dlq")
    @of_kind(kind)
    def handle(msg: Message[Any]) -> None:
        if msg.value.get("bad"):
            raise DeadLetter("bad deploy")

    breaker = {"threshold": 0.5, "window": 2, "min_messages": 2, "cooldown": 600}
    with TestClient(app, settings={"circuit_breaker": breaker}, timeout=3) as client:
        for _ in range(2):
            assert client.send("orders", {"bad": True}).outcome == "dead_lettered"
        # The breaker opened: the handler's partition is paused for the cooldown.
        assert client._sources["handle"].wait_for(lambda s: bool(s.paused), 5)
        breaker = client._runtimes["handle"].breaker
        assert breaker is not None
        # The cooldown counts from the opening, not from here: under load the pause was seen
        # a little after it, and measuring 600 s from this point failed about 1 run in 50.
        before, closes_in = client.clock.monotonic(), breaker.closes_in()
        assert 590 < closes_in <= 600
        delivery = client.send("orders", {"id": 1})
        assert delivery.outcome == "finished"
        assert client.clock.monotonic() - before >= closes_in


def test_the_kafka_broker_fixture_skips_without_java_or_maven(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_java() -> Path:
        raise BrokerError("'java' is not on PATH, needed to run the Kafka broker")

    monkeypatch.setattr(broker, "ensure_jars", no_java)
    fixture = pytest_plugin.kafka_broker.__wrapped__
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv(pytest_plugin.BOOTSTRAP_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="'java' is not on PATH"):
        next(fixture())
    monkeypatch.setenv("CI", "1")  # there it must fail, not skip
    with pytest.raises(BrokerError, match="'java' is not on PATH"):
        next(fixture())


def test_the_kafka_broker_fixture_hands_out_the_broker_the_environment_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def started(*args: object, **kwargs: object) -> None:
        raise AssertionError("a broker was started although one was named")

    monkeypatch.setattr(broker, "Cluster", started)
    monkeypatch.setenv(pytest_plugin.BOOTSTRAP_ENV, "broker-1:9092,broker-2:9092")
    assert next(pytest_plugin.kafka_broker.__wrapped__()) == "broker-1:9092,broker-2:9092"


def test_the_documented_live_example_is_the_test_that_runs() -> None:
    """docs/testing.md shows tests/examples/test_orders_app_live.py (a snippet the strict site
    build fails without), all of it below the docstring: what a reader copies is what the
    suite runs against a real broker, and it uses the public test kit alone."""
    root = Path(__file__).resolve().parents[2]
    code = (root / "tests" / "examples" / "test_orders_app_live.py").read_text()
    shown = code.split("# --8<-- [start:example]\n", 1)[1].split("# --8<-- [end:example]\n")
    assert shown[1] == ""  # nothing after the shown part
    assert code.split('"""', 2)[2].strip().startswith("# --8<-- [start:example]")
    page = (root / "docs" / "testing.md").read_text()
    assert '--8<-- "tests/examples/test_orders_app_live.py:example"' in page
    assert "tests.support" not in shown[0] and "admin" not in shown[0]


def test_the_dlq_traceback_is_the_last_attempts_without_the_frameworks_frames(kind: str) -> None:
    app = App("svc")

    def charge(msg: Message[Any]) -> None:
        try:
            raise KeyError(f"card of attempt {msg.attempt}")
        except KeyError as exc:
            raise Down(f"payment failed on attempt {msg.attempt}") from exc

    @app.handler("pay", retries=2, backoff=Backoff(initial=0, max=0), dlq="pay.dlq")
    @of_kind(kind)
    def handle(msg: Message[Any]) -> None:
        charge(msg)

    with TestClient(app) as client:
        assert client.send("pay", {"id": 1}).outcome == "dead_lettered"
    [dead] = client.records("pay.dlq")
    text = (dead.header("kw.error.traceback") or b"").decode()
    assert "payment failed on attempt 3" in text and "card of attempt 3" in text
    assert "attempt 1" not in text and "attempt 2" not in text
    frames = [line for line in text.splitlines() if line.lstrip().startswith('File "')]
    assert frames, text
    assert not [f for f in frames if "/kafkaworker/" in f or "/asyncio/" in f], text
    # The cause raised and caught in charge(); the error itself from the handler on.
    # (of_kind's async form runs the body in a thread: its two frames come between.)
    names = [f.split(", in ")[-1] for f in frames]
    assert (names[0], names[-2:]) == ("charge", ["handle", "charge"]), text
    assert len(names) == (3 if kind == "sync" else 5), text


def test_queue_mode_handlers_release_then_dead_letter_or_reject(kind: str) -> None:
    app = App("svc")
    calls: list[tuple[str, int]] = []

    @app.handler("jobs", mode="queue", group="workers", retries=10, dlq="jobs.dlq")
    @of_kind(kind)
    def work(msg: Message[Any]) -> None:
        calls.append(("work", msg.attempt))
        if msg.value["flaky"] and msg.attempt < 3:
            raise Down(f"delivery {msg.attempt}")
        if msg.value["broken"]:
            raise Down("always")

    @app.handler("tasks", mode="queue", group="workers", retries=1)
    @of_kind(kind)
    def task(msg: Message[Any]) -> None:
        calls.append(("task", msg.attempt))
        if msg.value == "skip":
            raise Skip("not for us")
        raise DeadLetter("no retry can fix it")

    @app.handler("orders")
    def order(msg: Message[Any]) -> None:
        calls.append(("order", msg.attempt))

    with TestClient(app, delivery_limit=4) as client:
        assert client.send("orders", {"id": 1}).outcome == "finished"  # stream mode beside
        flaky = client.send("jobs", {"flaky": True, "broken": False})
        # At the group's delivery limit (4), before retries=10: the last delivery goes to the
        # DLQ, since a release there would be archived by the broker with no DLQ record.
        broken = client.send("jobs", {"flaky": False, "broken": True})
        rejected = client.send("tasks", "fatal")
        skipped = client.send("tasks", "skip")
    assert (flaky.outcome, flaky.attempts, len(flaky.errors)) == ("finished", 3, 2)
    assert (broken.outcome, broken.attempts) == ("dead_lettered", 4)
    [dead] = broken.records
    assert (dead.topic, dead.header("kw.attempts")) == ("jobs.dlq", b"4")
    # No DLQ: the record is REJECTed (archived by the share group), never delivered again.
    assert (rejected.outcome, rejected.attempts, rejected.records) == ("rejected", 1, [])
    assert isinstance(rejected.errors[0], DeadLetter)
    assert (skipped.outcome, skipped.attempts) == ("skipped", 1)
    assert calls == [
        ("order", 1),
        ("work", 1), ("work", 2), ("work", 3),
        ("work", 1), ("work", 2), ("work", 3), ("work", 4),
        ("task", 1), ("task", 1),
    ]  # fmt: skip

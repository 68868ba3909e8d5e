"""The test kit for tests against a real broker: the pytest plugin's fixtures as a user's test
suite meets them, in a pytest run of its own (pytester), and kafkaworker.testing's helpers."""

from __future__ import annotations

import textwrap
import time

import pytest
from confluent_kafka import Consumer, TopicPartition
from pydantic import BaseModel

from kafkaworker import App, Message, Settings
from kafkaworker.testing import produce, read_topic, wait_for_commit
from kafkaworker.testing.registry import SchemaRegistry
from tests.conftest import TopicFactory
from tests.support import make_settings, running

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.kafka


def test_kafka_worker_with_capsys_tears_down_cleanly(
    pytester: pytest.Pytester, kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    """Issue 30, item 8: the worker logged "worker stopped" into capsys's file after capsys
    had closed it (ValueError: I/O operation on closed file), from a thread as well."""
    topic = new_topic(1)
    pytester.makeconftest(
        textwrap.dedent(
            f"""
            import pytest

            @pytest.fixture(scope="session")
            def kafka_broker():
                return {kafka_bootstrap!r}
            """
        )
    )
    pytester.makepyfile(
        test_user=textwrap.dedent(
            f"""
            from kafkaworker import App

            app = App("capsys-user")

            @app.handler({topic!r})
            def handle(msg):
                pass

            def test_with_capsys(kafka_worker, capsys):
                kafka_worker(app)
                print("from the test")
                assert capsys.readouterr().out == "from the test\\n"
            """
        )
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-W", "error")
    output = result.stdout.str() + result.stderr.str()
    result.assert_outcomes(passed=1)
    assert "I/O operation on closed file" not in output
    assert "Exception in thread" not in output
    assert "PytestUnhandledThreadExceptionWarning" not in output


def test_kafka_broker_reuses_the_broker_named_by_the_environment(
    pytester: pytest.Pytester, kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """KAFKAWORKER_TEST_BOOTSTRAP names a running broker: the fixture hands it out and starts
    no JVM; kafka_topic's topics (and those named after them) are gone after the test."""
    monkeypatch.setenv("KAFKAWORKER_TEST_BOOTSTRAP", kafka_bootstrap)
    monkeypatch.setenv("CI", "true")  # a missing java or mvn would fail, not skip
    monkeypatch.setenv("PATH", "/nonexistent")  # ...and there is none: no broker can start
    pytester.makepyfile(
        test_user=textwrap.dedent(
            f"""
            import os
            from kafkaworker.testing import create_topic, read_topic

            made = []

            def test_reuses(kafka_broker, kafka_topic):
                assert kafka_broker == {kafka_bootstrap!r}
                made.append(kafka_topic(partitions=2))
                create_topic(kafka_broker, made[0] + ".dlq")
                assert read_topic(kafka_broker, made[0]) == []

            def test_after(kafka_broker):
                from confluent_kafka.admin import AdminClient
                listed = AdminClient({{"bootstrap.servers": kafka_broker}}).list_topics(timeout=10)
                assert [t for t in listed.topics if t.startswith(made[0])] == []
            """
        )
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


class Order(BaseModel):
    id: int
    sku: str


def test_produce_encodes_with_the_codec_of_the_apps_handler(
    kafka_bootstrap: str,
    new_topic: TopicFactory,
    schema_registry: SchemaRegistry,
) -> None:
    """produce(app=...) writes what the app's handler reads: here codec="json_schema" by name,
    through the app's settings' schema_registry (Confluent framing: magic byte 0)."""
    topic, text_topic = new_topic(2), new_topic(1)
    app = App(
        f"g-{topic}",
        settings=Settings.model_validate({"schema_registry": {"url": schema_registry.url}}),
    )
    handled: list[Order] = []

    @app.handler(topic, codec="json_schema")
    def handle(order: Order) -> None:
        handled.append(order)

    @app.handler(text_topic, codec="text")
    def handle_text(msg: Message) -> None:
        pass

    placed = produce(kafka_bootstrap, topic, [Order(id=1, sku="A"), Order(id=2, sku="B")], app=app)
    produce(kafka_bootstrap, text_topic, ["héllo"], key="k", app=app)
    assert len(placed) == 2 and all(offset >= 0 for _, offset in placed)
    records = read_topic(kafka_bootstrap, topic)
    assert [r.value[0] for r in records if r.value] == [0, 0]  # registry-framed
    [text] = read_topic(kafka_bootstrap, text_topic)
    assert (text.key, text.value) == (b"k", "héllo".encode())

    with running(app, make_settings(kafka_bootstrap, schema_registry={"url": schema_registry.url})):
        wait_for_commit(kafka_bootstrap, app.name, topic, timeout=60)
    assert sorted(o.id for o in handled) == [1, 2]


def test_produce_to_a_topic_no_handler_consumes_is_one_line(kafka_bootstrap: str) -> None:
    app = App("kit-no-handler")

    @app.handler("kit-orders")
    def handle(msg: Message) -> None:
        pass

    with pytest.raises(ValueError, match=r"no handler of app 'kit-no-handler' consumes 'other'"):
        produce(kafka_bootstrap, "other", [{"id": 1}], app=app)


def test_read_topic_waits_for_a_count_and_says_how_many_came(
    kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    topic = new_topic(3)
    produce(kafka_bootstrap, topic, [{"n": i} for i in range(5)], keys=[str(i) for i in range(5)])
    records = read_topic(kafka_bootstrap, topic, count=5)
    assert sorted(r.json()["n"] for r in records) == list(range(5))
    assert [(r.partition, r.offset) for r in records] == sorted(
        (r.partition, r.offset) for r in records
    )
    assert len(read_topic(kafka_bootstrap, topic)) == 5  # everything there now
    started = time.monotonic()
    with pytest.raises(AssertionError, match=rf"5 of 6 record\(s\) arrived on '{topic}' within 1s"):
        read_topic(kafka_bootstrap, topic, count=6, timeout=1)
    assert time.monotonic() - started < 10
    with pytest.raises(AssertionError, match="topic 'kit-missing-topic' does not exist"):
        read_topic(kafka_bootstrap, "kit-missing-topic", timeout=1)


def test_wait_for_commit_until_the_log_end_and_what_a_timeout_says(
    kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    topic = new_topic(2)
    produce(kafka_bootstrap, topic, [b"a", b"b", b"c"], partitions=[0, 0, 1])
    group = f"kit-{topic}"
    with pytest.raises(
        AssertionError,
        match=rf"group '{group}' did not commit within 1s: {topic}\[0\] at nothing of 2, "
        rf"{topic}\[1\] at nothing of 1",
    ):
        wait_for_commit(kafka_bootstrap, group, topic, timeout=1)
    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": group})
    try:
        consumer.commit(offsets=[TopicPartition(topic, 0, 2)], asynchronous=False)
        with pytest.raises(AssertionError, match=rf"{topic}\[1\] at nothing of 1$"):
            wait_for_commit(kafka_bootstrap, group, topic, timeout=1)
        assert wait_for_commit(kafka_bootstrap, group, topic, offsets={0: 2}) == {0: 2, 1: -1}
        consumer.commit(offsets=[TopicPartition(topic, 1, 1)], asynchronous=False)
    finally:
        consumer.close()
    assert wait_for_commit(kafka_bootstrap, group, topic, timeout=10) == {0: 2, 1: 1}

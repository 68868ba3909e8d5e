"""Tracing with the two transactional paths against a real broker, in process (the Runner,
spans kept by the SDK's in-memory exporter): an exactly_once copier's outputs continue their
inputs' traces through the transaction, which has a span of its own; a handler with the
PostgreSQL inbox runs its database transaction inside the message's process span."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from confluent_kafka import Producer
from opentelemetry import trace

from kafkaworker import App, Message
from kafkaworker.postgres import PostgresInbox
from tests.conftest import TopicFactory
from tests.integration.test_exactly_once import finished
from tests.memory_spans import PARENT_SPAN, PARENT_TRACE, TRACEPARENT, hex_ids, parent_id
from tests.memory_spans import spans as memory_spans
from tests.memory_spans import traceparent as carried_by
from tests.support import make_settings, read_topic, running, wait_until

pytestmark = pytest.mark.kafka

TOTAL = 30


def produce_traced(bootstrap: str, topic: str, total: int) -> None:
    """`total` records, each carrying the test producer's sampled context."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for i in range(total):
        producer.produce(topic, b"%d" % i, key=b"k%d" % i, headers=[("traceparent", TRACEPARENT)])
    assert producer.flush(30) == 0


def test_an_exactly_once_copiers_outputs_continue_their_inputs_trace(
    kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    exporter = memory_spans()
    source, output = new_topic(2), new_topic(2)
    app = App("eos-traced")

    @app.handler(
        source,
        output=output,
        codec="raw",
        ordering="key",
        concurrency=4,
        processing_guarantee="exactly_once",
    )
    def copy(msg: Message[bytes]) -> bytes:
        return msg.value

    produce_traced(kafka_bootstrap, source, TOTAL)
    settings = make_settings(kafka_bootstrap, tracing={"enabled": True}, transaction_interval=0.05)
    with running(app, settings):
        wait_until(
            lambda: finished(kafka_bootstrap, "eos-traced", source, 2) == TOTAL,
            60,
            "every input committed",
        )
    records = read_topic(kafka_bootstrap, output, TOTAL)  # read_committed: librdkafka's default
    finished_spans = list(exporter.get_finished_spans())
    processes = [s for s in finished_spans if s.name == f"process {source}"]
    sends = {hex_ids(s): s for s in finished_spans if s.name == f"send {output}"}
    commits = [s for s in finished_spans if s.name == "commit"]
    assert len(processes) == TOTAL
    assert {parent_id(s) for s in processes} == {PARENT_SPAN}
    # Each committed output carries the context of its send span, in the producer's trace, a
    # child of its input's process span, ended with the offset the broker gave it.
    process_ids = {hex_ids(s)[1] for s in processes}
    for record in records:
        trace_id, span_id = carried_by(record.headers())
        assert trace_id == PARENT_TRACE
        send = sends[(trace_id, span_id)]
        assert parent_id(send) in process_ids
        assert (send.attributes or {})["messaging.kafka.offset"] == record.offset()
    # The transactions that committed them: spans of their own, counting their records.
    assert commits, "a commit span"
    committed_records = sum(
        int((s.attributes or {})["kafkaworker.transaction.records"])
        for s in commits  # type: ignore[arg-type]
    )
    assert committed_records == TOTAL
    assert {s.attributes["messaging.consumer.group.name"] for s in commits} == {"eos-traced"}  # type: ignore[index]


def test_an_inbox_handlers_database_transaction_runs_in_its_process_span(
    kafka_bootstrap: str, new_topic: TopicFactory, postgres_url: str
) -> None:
    exporter = memory_spans()
    topic = new_topic(2)
    group = f"g-{topic}"
    app = App("inbox-traced")
    inbox = PostgresInbox(postgres_url)
    in_call: dict[int, tuple[str, str, Any]] = {}

    @app.handler(topic, group=group, inbox=inbox, codec="raw", concurrency=2)
    def handle(msg: Message[bytes], db: psycopg.Connection) -> None:
        # The row the inbox wrote for this message is visible in the handler's transaction.
        row = db.execute(
            'select "offset" from kafkaworker_inbox where group_id = %s and topic = %s '
            'and partition = %s and "offset" = %s',
            (group, msg.topic, msg.partition, msg.offset),
        ).fetchone()
        context = trace.get_current_span().get_span_context()
        in_call[msg.offset * 2 + msg.partition] = (
            format(context.trace_id, "032x"),
            format(context.span_id, "016x"),
            row,
        )

    produce_traced(kafka_bootstrap, topic, TOTAL)
    with running(app, make_settings(kafka_bootstrap, tracing={"enabled": True})):
        wait_until(lambda: len(in_call) == TOTAL, 60, "every message handled")
    processes = {
        hex_ids(s): s for s in exporter.get_finished_spans() if s.name == f"process {topic}"
    }
    assert len(processes) == TOTAL
    for trace_id, span_id, row in in_call.values():
        assert row is not None  # inside the inbox's transaction
        assert trace_id == PARENT_TRACE
        assert parent_id(processes[(trace_id, span_id)]) == PARENT_SPAN
    with psycopg.connect(postgres_url) as db:
        counted = db.execute(
            "select count(*) from kafkaworker_inbox where group_id = %s", (group,)
        ).fetchone()
    assert counted == (TOTAL,)

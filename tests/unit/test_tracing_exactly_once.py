"""Tracing an exactly_once handler without a broker (the in-memory source, a fake
transactional producer that reports each record's delivery at the commit, as librdkafka's
flush in commit_transaction does, and the SDK's in-memory exporter): the process span per
message, a send span per held record whose context the record carries, a span per
transaction (`commit`, or `abort` with error.type)."""

from __future__ import annotations

from collections.abc import Iterator

import orjson
import pytest
from confluent_kafka import KafkaError
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode

from kafkaworker import App, Message
from kafkaworker.runtime.source import Partition
from kafkaworker.runtime.source.memory import MemorySource
from tests.memory_spans import (
    PARENT_SPAN,
    PARENT_TRACE,
    TRACEPARENT,
    hex_ids,
    parent_id,
    spans,
    traceparent,
)
from tests.unit.test_exactly_once import EOS, FakeTransactions, abortable, copying, resolved

INPUTS = 40


class _Delivered:
    def __init__(self, partition: int, offset: int) -> None:
        self._partition, self._offset = partition, offset

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset


class DeliveringTransactions(FakeTransactions):
    """FakeTransactions that reports each record's delivery: at the commit (success, its
    headers kept in `written`), or purged at the abort."""

    def __init__(self, source: MemorySource) -> None:
        super().__init__(source)
        self.written: list[list[tuple[str, bytes | None]]] = []  # committed records' headers

    def commit_transaction(self, timeout: float = -1) -> None:
        super().commit_transaction(timeout)
        reports, self.produced = self.produced, []
        for offset, (report, headers) in enumerate(reports):
            report(None, _Delivered(0, offset))
            with self.lock:
                self.written.append(headers)

    def abort_transaction(self, timeout: float = -1) -> None:
        super().abort_transaction(timeout)
        reports, self.produced = self.produced, []
        for report, _ in reports:
            report(KafkaError(KafkaError._PURGE_QUEUE, "purged"), None)


@pytest.fixture
def traced_copier() -> Iterator[tuple[MemorySource, DeliveringTransactions]]:
    spans()  # the in-memory exporter, before the handler's tracer is made
    fake = DeliveringTransactions(MemorySource({"t": 4, "o": 1}))
    with copying(fake, concurrency=4, tracing={"enabled": True}) as (source, _):
        yield source, fake


def _feed(source: MemorySource) -> None:
    for i in range(INPUTS):
        source.broker.append(
            "t",
            orjson.dumps(i),
            key=b"k%d" % i,
            partition=i % 4,
            headers=[("traceparent", TRACEPARENT)],
        )
    partitions = [Partition("t", p) for p in range(4)]
    assert source.wait_for(
        lambda s: all(s.committed.get(p) == s.log_size(p) for p in partitions), 30
    ), "every input committed"


def _named(finished: list[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [span for span in finished if span.name == name]


def test_tracing_is_no_longer_refused_with_exactly_once() -> None:
    spec = resolved({"tracing": {"enabled": True}, "processing_guarantee": EOS})
    assert spec.processing_guarantee == EOS


def test_outputs_held_for_the_transaction_continue_their_inputs_trace(
    traced_copier: tuple[MemorySource, DeliveringTransactions],
) -> None:
    source, fake = traced_copier
    exporter = spans()
    _feed(source)
    assert source.wait_for(
        lambda _: (
            sum(
                s.attributes["kafkaworker.transaction.records"]  # type: ignore[index]
                for s in _named(list(exporter.get_finished_spans()), "commit")
            )
            >= INPUTS
        ),
        10,
    ), "the commit spans end after the commits"
    finished = list(exporter.get_finished_spans())
    processes = _named(finished, "process t")
    sends = _named(finished, "send o")
    commits = _named(finished, "commit")
    assert len(processes) == len(sends) == INPUTS
    # Each process span continues the producer's trace; each send span is its child.
    assert {hex_ids(s)[0] for s in processes + sends} == {PARENT_TRACE}
    assert {parent_id(s) for s in processes} == {PARENT_SPAN}
    assert {parent_id(s) for s in sends} == {hex_ids(s)[1] for s in processes}
    assert {s.kind for s in sends} == {SpanKind.PRODUCER}
    assert all("messaging.kafka.offset" in (s.attributes or {}) for s in sends)  # delivered
    # The committed records carry their send span's context.
    carried = {traceparent(headers) for headers in fake.written}
    assert carried == {hex_ids(s) for s in sends}
    # The transactions: CLIENT spans counting what they committed, linked to the sends.
    assert {s.kind for s in commits} == {SpanKind.CLIENT}
    assert sum(s.attributes["kafkaworker.transaction.records"] for s in commits) == INPUTS  # type: ignore[index, misc]
    assert all(1 <= s.attributes["kafkaworker.transaction.offsets"] <= 4 for s in commits)  # type: ignore[index, operator]
    linked = {format(link.context.span_id, "016x") for s in commits for link in s.links}
    assert linked == {hex_ids(s)[1] for s in sends}
    assert all(s.attributes["messaging.operation.type"] == "settle" for s in commits)  # type: ignore[index]


def test_an_aborted_transaction_is_an_abort_span_with_its_error_type(
    traced_copier: tuple[MemorySource, DeliveringTransactions],
) -> None:
    source, fake = traced_copier
    exporter = spans()
    fake.fail["commit"] = abortable("a delivery failed")
    _feed(source)
    assert fake.aborted == 1
    assert source.wait_for(lambda _: _named(list(exporter.get_finished_spans()), "commit"), 10)
    finished = list(exporter.get_finished_spans())
    [aborted] = _named(finished, "abort")
    assert aborted.attributes is not None
    assert aborted.attributes["error.type"] == "_STATE"
    assert aborted.attributes["messaging.operation.name"] == "abort"
    assert aborted.status.status_code is StatusCode.ERROR
    assert aborted.status.description == "a delivery failed"  # librdkafka's message, not a repr
    # Its records' send spans ended failed (purged); the redelivered messages' sends did not.
    failed = [s for s in _named(finished, "send o") if (s.attributes or {}).get("error.type")]
    assert len(failed) == aborted.attributes["kafkaworker.transaction.records"]
    assert len(fake.outputs()) == INPUTS  # each input's output committed once


def test_a_dead_letter_and_app_producer_sends_carry_the_trace_through_the_transaction() -> None:
    exporter = spans()
    app = App("svc")

    @app.handler(
        "t",
        name="copy",
        output="o",
        codec="raw",
        retries=0,
        dlq="t.dlq",
        processing_guarantee=EOS,
    )
    def copy(msg: Message[bytes]) -> bytes:
        app.producer.send("side", msg.value, key=msg.key)
        if msg.value == b"fail":
            raise ValueError("cannot")
        return msg.value

    spec = app.handlers["copy"]
    fake = DeliveringTransactions(MemorySource({"t": 1, "o": 1, "side": 1, "t.dlq": 1}))
    with copying(fake, spec=spec, tracing={"enabled": True}) as (source, _):
        for value in (b"ok", b"fail"):
            source.broker.append("t", value, headers=[("traceparent", TRACEPARENT)])
        assert source.wait_for(lambda s: s.committed.get(Partition("t", 0)) == 2, 30)
    finished = list(exporter.get_finished_spans())
    processes = {hex_ids(s)[1]: s for s in finished if s.name == "process t"}
    sends = {hex_ids(s): s for s in finished if s.name.startswith("send ")}
    # ok: its side record and output; fail: its side record is dropped with the failed
    # call, its dead letter is held and committed.
    assert sorted(s.name for s in sends.values()) == ["send o", "send side", "send t.dlq"]
    assert len(fake.written) == 3
    for headers in fake.written:
        send = sends[traceparent(headers)]
        assert parent_id(send) in processes
    [dead] = [s for s in sends.values() if s.name == "send t.dlq"]
    failed = processes[parent_id(dead) or ""]
    assert (failed.attributes or {})["error.type"] == "builtins.ValueError"

"""Failures in the trace, checked in a real Jaeger: the attempts as events of the message's
process span, its error.type, the DLQ and retry-topic records carrying the trace on (their
traceparent), `dlq inspect` and the dashboard's recent failures naming the trace, and `dlq
replay` starting a new trace that links back to the failed one."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from typing import Any

import orjson
import pytest

from kafkaworker.testing.jaeger import Span, named
from kafkaworker.testing.jvm import free_port
from tests.support import ROOT, read_topic, wait_until
from tests.tracing.conftest import Traced

pytestmark = pytest.mark.kafka


def _traceparent(record: Any) -> tuple[str, str]:
    """(trace id, span id) of a fetched record's traceparent."""
    value = dict(record.headers() or [])["traceparent"].decode()
    _, trace_id, span_id, _ = value.split("-")
    return trace_id, span_id


def test_a_dead_lettered_message_carries_its_trace_to_the_dlq_and_a_replay_links_back(
    traced: Traced, kafka_bootstrap: str
) -> None:
    failing, dlq = traced.topic(prefix="failing"), traced.topic(prefix="failing-dlq")
    workers = traced.workers({"failing": failing, "dlq": dlq})
    port = free_port()
    workers.start("failing", "failing-worker", "--metrics-port", str(port))

    trace_id, sent_id = traced.producer.send(failing, orjson.dumps({"id": 9, "fail": True}))

    def dead_lettered(spans: list[Span]) -> bool:
        # Both: the process span ends after the DLQ write's send span, and the batch span
        # processor may export them in two batches (seen once, the process span missing).
        return all(
            named(spans, name, "failing-worker") is not None
            for name in (f"send {dlq}", f"process {failing}")
        )

    spans = traced.jaeger.wait_spans(
        trace_id, dead_lettered, "the DLQ record's send span and the process span"
    )
    process = named(spans, f"process {failing}", "failing-worker")
    sent = named(spans, f"send {dlq}", "failing-worker")
    assert process is not None and sent is not None
    assert process.parent == sent_id and sent.parent == process.span_id
    # One span for the delivery: each failed attempt an exception event, with what was
    # decided; the failure that settled it is the span's error.
    assert process.tags["error.type"] == "builtins.ValueError"
    assert process.tags["otel.status_code"] == "ERROR"
    attempts = [
        (e["kafkaworker.attempt"], e["kafkaworker.decision"], e["exception.type"])
        for e in process.events
        if e.get("event") == "exception"
    ]
    assert attempts == [(1, "retry", "ValueError"), (2, "dead letter", "ValueError")]
    # The DLQ record carries the trace on: its traceparent is the DLQ write's span.
    (record,) = read_topic(kafka_bootstrap, dlq, 1)
    assert _traceparent(record) == (trace_id, sent.span_id)

    # The dashboard's recent failures name the trace.
    def failures() -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/failures", timeout=5) as r:
            return list(json.load(r)["failures"])

    shown = wait_until(failures, 30, "the recent failures")
    assert [f["trace_id"] for f in shown] == [trace_id, trace_id]

    # `dlq inspect` names it too, in both formats.
    base = [sys.executable, "-m", "kafkaworker", "dlq", "inspect", dlq]
    env = {**workers.env}
    text = subprocess.run(base, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert f"  trace {trace_id}\n" in text.stdout
    as_json = subprocess.run(
        [*base, "--json"], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    assert [orjson.loads(line)["trace_id"] for line in as_json.stdout.splitlines()] == [trace_id]

    # A replay is a new trace, linked to the failed one; the worker's span is its child.
    replay = subprocess.run(
        [sys.executable, "-m", "kafkaworker", "dlq", "replay", dlq],
        cwd=ROOT,
        env={**env, "OTEL_SERVICE_NAME": "replayer"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert replay.returncode == 0, replay.stderr
    again = read_topic(kafka_bootstrap, dlq, 2)[1]  # it fails again: dead-lettered again
    replay_trace, _ = _traceparent(again)
    assert replay_trace != trace_id

    def replayed(spans: list[Span]) -> bool:
        return named(spans, f"process {failing}", "failing-worker") is not None

    spans = traced.jaeger.wait_spans(replay_trace, replayed, "the replayed record's process span")
    replaying = named(spans, f"process {dlq}", "replayer")
    resent = named(spans, f"send {failing}", "replayer")
    reprocessed = named(spans, f"process {failing}", "failing-worker")
    assert replaying is not None and resent is not None and reprocessed is not None
    assert replaying.parent is None
    assert replaying.links == [(trace_id, sent.span_id)]
    assert resent.parent == replaying.span_id
    assert reprocessed.parent == resent.span_id


def test_a_retry_topic_delivery_goes_on_in_the_same_trace(traced: Traced) -> None:
    retried, dlq = traced.topic(prefix="retried"), traced.topic(prefix="retried-dlq")
    workers = traced.workers({"retried": retried, "retried_dlq": dlq})
    workers.start("retried", "retried-worker")
    retry_topic = f"{retried}.retry.0.2s"

    trace_id, sent_id = traced.producer.send(retried, orjson.dumps({"id": 5, "fail": True}))

    def done(spans: list[Span]) -> bool:
        # The retry topic delivery's process span ends after its DLQ send: both, as above.
        return all(
            named(spans, name) is not None for name in (f"send {dlq}", f"process {retry_topic}")
        )

    spans = traced.jaeger.wait_spans(trace_id, done, "the DLQ send span after the retry topic")
    first = named(spans, f"process {retried}")
    to_retry = named(spans, f"send {retry_topic}")
    second = named(spans, f"process {retry_topic}")
    to_dlq = named(spans, f"send {dlq}")
    assert first is not None and to_retry is not None and second is not None
    assert to_dlq is not None
    assert first.parent == sent_id
    assert to_retry.parent == first.span_id
    assert second.parent == to_retry.span_id
    assert to_dlq.parent == second.span_id
    assert first.tags["error.type"] == second.tags["error.type"] == "builtins.ValueError"

"""What the failure path tells a reader: where a dead-lettered message failed, and handler time
that counts the handler's calls, not the waits between them (issue 30, items 4 and 10)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from structlog.testing import capture_logs

from kafkaworker import App, Backoff, DeadLetter, Message
from kafkaworker.observability import logging as kw_logging
from kafkaworker.observability.metrics import Metrics
from kafkaworker.runtime.compose import AppRuntime, GivenSources
from kafkaworker.runtime.source import Partition
from kafkaworker.runtime.source.memory import MemorySource
from kafkaworker.testing import TestClient
from tests.unit.runtime_support import settings


def dead_letter_app() -> App:
    app = App("svc")

    @app.handler("orders", dlq="orders.dlq", codec="raw")
    def pay(msg: Message[Any]) -> None:
        raise DeadLetter(f"order {msg.value!r} is unpayable")  # the line the log must name

    return app


def test_a_dead_letter_line_says_where_the_handler_failed() -> None:
    with capture_logs() as logs, TestClient(dead_letter_app()) as client:
        assert client.send("orders", raw_value=b"7").outcome == "dead_lettered"
    [line] = [e for e in logs if e["event"] == "message sent to the dead-letter topic"]
    path, _, number = line["at"].rpartition(":")
    assert path == __file__
    with open(__file__) as source:
        assert "the line the log must name" in source.readlines()[int(number) - 1]
    assert isinstance(line["exc_info"], DeadLetter)


@pytest.mark.parametrize(
    ("level", "fmt", "traceback"),
    [("INFO", "console", False), ("DEBUG", "console", True), ("INFO", "json", True)],
)
def test_its_traceback_shows_at_debug_or_in_json(
    level: str, fmt: str, traceback: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    kw_logging.configure(level, fmt)  # type: ignore[arg-type]
    try:
        with TestClient(dead_letter_app()) as client:
            client.send("orders", raw_value=b"7")
    finally:
        kw_logging.configure("WARNING")
    err = capsys.readouterr().err
    [line] = [text for text in err.splitlines() if "dead-letter topic" in text]
    assert "test_failure_logs.py:" in line  # at=file:line, in every format
    if fmt == "json":
        assert ("Traceback" in json.loads(line).get("exception", "")) is traceback
        assert "traceback_at" not in json.loads(line)
    else:
        assert "traceback_at" not in line
        # The dead letter is the only failure (DeadLetter is fatal: no retry warnings).
        assert ("Traceback (most recent call last)" in err) is traceback


def test_handler_time_counts_the_calls_not_the_backoff_between_them() -> None:
    app = App("svc")
    calls: list[int] = []

    @app.handler("t", retries=2, backoff=Backoff(initial=0.3, max=0.3, jitter="none"))
    def flaky(msg: Message[Any]) -> None:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("not yet")

    source = MemorySource({"t": 1})
    source.broker.append("t", b"{}")
    metrics = Metrics()
    sources = GivenSources({"flaky": source})
    runtime = AppRuntime(app, settings(), [app.handlers["flaky"]], sources=sources, metrics=metrics)
    with runtime:
        runtime.start()
        assert source.wait_for(lambda s: s.committed.get(Partition("t", 0)) == 1, 10)
    assert len(calls) == 3
    # Two backoffs of 0.3 s passed in real time; the three calls took next to nothing.
    assert metrics.value("kafkaworker_handler_seconds_total", handler="flaky") < 0.1

"""A tiny run of the benchmark suite, so that `make bench` cannot rot. It asserts that every
contender processed every message and that figures were written, never a time."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.run import main
from tools.jaeger import binary

pytestmark = pytest.mark.kafka


def test_the_benchmark_suite_runs_end_to_end(kafka_bootstrap: str, tmp_path: Path) -> None:
    code = main(
        [
            "--smoke",
            "--scenarios",
            "s1,s2,s4",
            "--messages",
            "5000",
            "--bootstrap",
            kafka_bootstrap,
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    report = json.loads((tmp_path / "smoke.json").read_text())
    s1 = {r["contender"]: r for r in report["s1"]}
    # With Jaeger built (make jaeger-tools, as `make test` does), S1 runs kafkaworker traced too.
    traced = (
        {"kafkaworker traced, 100%", "kafkaworker traced, parent-based 10%"} if binary() else set()
    )
    assert set(s1) == {
        "raw confluent-kafka",
        "raw confluent-kafka, librdkafka defaults",
        "kafkaworker",
        "kafkaworker async",
        *traced,
    }
    assert all(r["processed"] >= 5000 and r["msgs_per_s"] > 0 for r in s1.values())
    # raw, kafkaworker's 3 orderings x 3 concurrencies, and its async handler at 3 concurrencies
    assert len(report["s2"]) == 1 + 9 + 3
    assert all("error" not in r for r in report["s2"])
    assert {r["contender"] for r in report["s4"]} == {
        "raw confluent-kafka",
        "kafkaworker",
        "kafkaworker async",
    }
    assert all(r["latency_ms"]["p50"] >= 0 for r in report["s4"])
    written = (tmp_path / "smoke.md").read_text()
    assert "## S1 throughput" in written
    assert ("Tracing on (spans exported to a real Jaeger" in written) == bool(traced)


def test_s9_the_outbox_relay_and_the_inbox_rows_run(
    kafka_bootstrap: str, postgres_server: object, tmp_path: Path
) -> None:
    """S9 with its own throwaway PostgreSQL (postgres_server: installed and startable here)."""
    code = main(
        ["--smoke", "--scenarios", "s9", "--bootstrap", kafka_bootstrap, "--out", str(tmp_path)]
    )
    assert code == 0
    s9 = json.loads((tmp_path / "smoke.json").read_text())["s9"]
    assert "error" not in s9, s9
    assert s9["rows"] == 2000 and s9["records_per_s"] > 0 and s9["latency_rows"] > 0
    inbox = s9["inbox"]
    assert inbox["messages"] == 2000
    assert all(
        inbox[k] > 0
        for k in (
            "inbox_msg_s",
            "own_connection_msg_s",
            "own_transaction_msg_s",
            "inbox_batch_msg_s",
        )
    )
    written = (tmp_path / "smoke.md").read_text()
    assert "## S9 outbox relay" in written
    assert "| batch inbox (vs autocommit) |" in written

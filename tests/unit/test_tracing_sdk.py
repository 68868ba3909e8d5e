"""The SDK set-up's own errors, each one line at start-up, before any broker is asked."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.support import ROOT


def _run(**env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kafkaworker", "run", "tests.apps.traced:app", "--only", "orders"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env={
            **os.environ,
            "KAFKAWORKER_TRACING__ENABLED": "true",
            # Nothing answers here: an error must come before the cluster is asked.
            "KAFKAWORKER_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:1",
            **env,
        },
    )


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"OTEL_TRACES_EXPORTER": "zipkin"},
            "Error: OTEL_TRACES_EXPORTER='zipkin': kafkaworker sets up otlp, console or none",
        ),
        (
            {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
            "Error: OTEL_EXPORTER_OTLP_PROTOCOL='http/json': kafkaworker exports http/protobuf, "
            "or grpc with opentelemetry-exporter-otlp-proto-grpc installed",
        ),
        (
            {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            "Error: OTEL_EXPORTER_OTLP_PROTOCOL=grpc needs pip install "
            "opentelemetry-exporter-otlp-proto-grpc (or use http/protobuf)",
        ),
    ],
)
def test_an_exporter_kafkaworker_cannot_set_up_is_a_one_line_start_up_error(
    env: dict[str, str], expected: str
) -> None:
    result = _run(**env)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines() == [expected]

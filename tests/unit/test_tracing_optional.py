"""The core without the `otel` extra: it runs, and turning tracing on says what to install, in
one line. And what the core reads of a trace without the SDK (a record's trace id)."""

from __future__ import annotations

import os
import subprocess
import sys

from kafkaworker.tracing import trace_id_of
from tests.support import ROOT

# OpenTelemetry made unimportable in a fresh interpreter, as where the extra is not installed.
_WITHOUT_OTEL = "import sys; sys.modules['opentelemetry'] = None\n"


def _python(
    code: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _WITHOUT_OTEL + code, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env=env,
    )


def test_a_worker_without_the_extra_handles_messages_and_logs() -> None:
    code = (
        "from kafkaworker import App\n"
        "from kafkaworker.observability import logging\n"
        "from kafkaworker.testing import TestClient\n"
        "logging.configure('INFO', 'json')\n"
        "app = App('svc')\n"
        "app.handler('orders', output='shipped')(lambda msg: {'id': msg.value['id']})\n"
        "with TestClient(app) as client:\n"
        "    print(client.send('orders', {'id': 1}).outcome, client.records('shipped')[0].json())\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    result = _python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["finished {'id': 1}", "['opentelemetry']"]


def test_tracing_on_without_the_extra_is_a_one_line_start_up_error() -> None:
    code = "from kafkaworker.cli import main\nsys.argv[0] = 'kafkaworker'\nmain()\n"
    env = {**os.environ, "KAFKAWORKER_TRACING__ENABLED": "true"}
    result = _python(code, "run", "tests.apps.traced:app", "--only", "orders", env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("Error: tracing.enabled needs the OpenTelemetry SDK")
    assert lines[0].endswith("pip install 'kafkaworker[otel]'")


def test_the_trace_id_of_a_record_is_read_from_its_traceparent() -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    header = f"00-{trace_id}-00f067aa0ba902b7-01".encode()
    assert trace_id_of([("traceparent", header)]) == trace_id
    # The last header of the name wins, as Message.header() reads it.
    assert (
        trace_id_of(
            [
                ("traceparent", b"00-" + b"1" * 32 + b"-" + b"2" * 16 + b"-00"),
                ("traceparent", header),
            ]
        )
        == trace_id
    )
    assert trace_id_of([("traceparent", header.decode())]) == trace_id
    for bad in (
        b"",
        b"garbage",
        b"00-" + b"0" * 32 + b"-00f067aa0ba902b7-01",
        b"ff-" + trace_id.encode() + b"-00f067aa0ba902b7-01",
        b"00-xyz-00f067aa0ba902b7-01",
    ):
        assert trace_id_of([("traceparent", bad)]) is None, bad
    assert trace_id_of([("other", header)]) is None
    assert trace_id_of(None) is None

"""The CLI: routes, and one clear line when MODULE:APP cannot be used."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from kafkaworker.cli import cli

APP = textwrap.dedent(
    """
    from kafkaworker import App, Backoff

    app = App("billing")
    not_an_app = 42

    @app.handler(["invoices", "refunds"], concurrency=4, ordering="key", retries=3,
                 dlq="billing.dlq", backoff=Backoff(initial=1))
    def settle(msg):
        pass

    @app.handler("audit", group="auditors", codec="raw")
    def audit(msg):
        pass
    """
)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "billing_app.py").write_text(APP)
    (tmp_path / "broken_app.py").write_text("raise RuntimeError('no database URL')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_routes_lists_every_handler(project: Path) -> None:
    result = CliRunner().invoke(cli, ["routes", "billing_app:app"])
    assert result.exit_code == 0, result.output
    lines = [line.split() for line in result.output.splitlines()]
    assert lines[0] == [
        "NAME",
        "TOPICS",
        "GROUP",
        "CONCURRENCY",
        "ORDERING",
        "RETRIES",
        "DLQ",
        "CODEC",
    ]
    assert lines[1] == [
        "settle",
        "invoices,refunds",
        "billing",
        "4",
        "key",
        "3",
        "billing.dlq",
        "json",
    ]
    assert lines[2] == ["audit", "audit", "auditors", "8", "partition", "0", "-", "raw"]


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("billing_app", "'billing_app' is not MODULE:APP (for example myapp:app)"),
        (
            "nosuch:app",
            "cannot import module 'nosuch' (from 'nosuch:app'): no module named "
            "'nosuch'; run from the directory that holds it, or fix the name",
        ),
        (
            "billing_app:application",
            "module 'billing_app' has no attribute 'application'; it defines: app",
        ),
        ("billing_app:not_an_app", "'billing_app:not_an_app' is a int, not a kafkaworker.App"),
        ("broken_app:app", "importing 'broken_app' raised RuntimeError: no database URL"),
    ],
)
def test_unusable_app_reference_is_one_line(project: Path, reference: str, expected: str) -> None:
    result = CliRunner().invoke(cli, ["run", reference])
    assert result.exit_code == 1
    assert result.output == f"Error: {expected}\n"


def test_unreachable_broker_fails_fast_with_one_line(project: Path) -> None:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "kafkaworker", "run", "billing_app:app"],
        cwd=project,
        env={
            "PATH": "/usr/bin:/bin",
            "KAFKAWORKER_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:9",
            "KAFKAWORKER_STARTUP_TIMEOUT": "2",
            "PYTHONPATH": str(Path.cwd()),
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1
    assert errors[0].startswith("Error: cannot reach Kafka at 127.0.0.1:9 within 2s")
    assert "KAFKAWORKER_KAFKA__BOOTSTRAP_SERVERS" in errors[0]
    assert elapsed < 30

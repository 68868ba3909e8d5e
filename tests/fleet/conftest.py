"""What the fleet's tests share: fleet topics of their own per test (so no test sees another's
processes), a `kafkaworker dashboard` process, and worker apps that report to them.

Workers run in this process (kafkaworker.testing's `running`, one Runner each: each is a
process of the fleet with an id of its own) or as real `kafkaworker run` processes
(tests/fleet/fleetapp.py) where a test kills one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kafkaworker.testing.jvm import free_port
from tests.dashboard.conftest import chromium, page  # noqa: F401 - the browser tests' fixtures
from tests.metrics_support import get
from tests.support import wait_until

ROOT = Path(__file__).resolve().parent.parent.parent
BUILD = ROOT / "build" / "fleet"
TOKEN = "fleet-secret-4c1d"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "browser: drives the dashboard page in a real Chromium (Playwright)"
    )


def fleet_settings(suffix: str, *, interval: float = 1.0, control: bool = True) -> dict[str, Any]:
    """fleet: settings on topics of this test's own."""
    return {
        "enabled": True,
        "topic": f"fleet-{suffix}.reports",
        "errors_topic": f"fleet-{suffix}.errors",
        "commands_topic": f"fleet-{suffix}.commands",
        "audit_topic": f"fleet-{suffix}.audit",
        "interval": interval,
        "control": control,
    }


def as_env(prefix: str, values: dict[str, Any]) -> dict[str, str]:
    """Settings as KAFKAWORKER_* variables."""
    return {
        f"{prefix}{key.upper()}": str(value).lower() if isinstance(value, bool) else str(value)
        for key, value in values.items()
    }


class Process:
    """A `kafkaworker` command in a process of its own, its output in a log under build/."""

    def __init__(self, args: list[str], env: dict[str, str], log_name: str) -> None:
        BUILD.mkdir(parents=True, exist_ok=True)
        self.log = BUILD / f"{log_name}-{uuid.uuid4().hex[:6]}.log"
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "kafkaworker", *args],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        """SIGTERM, and SIGKILL after 40 s."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(40)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class DashboardProcess(Process):
    """`kafkaworker dashboard` as an operator runs it: its own process, settings from the
    environment."""

    def __init__(self, bootstrap: str, fleet: dict[str, Any], *, control: bool, **extra: str):
        self.port = free_port()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("KAFKAWORKER_")},
            "PYTHONPATH": str(ROOT),
            "KAFKAWORKER_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
            **as_env("KAFKAWORKER_FLEET__", fleet),
            "KAFKAWORKER_DASHBOARD__CONTROL": str(control).lower(),
            "KAFKAWORKER_DASHBOARD__TOKEN": TOKEN,
            **extra,
        }
        args = ["dashboard", "--port", str(self.port), "--host", "127.0.0.1"]
        super().__init__(args, env, "dashboard")

    def wait_ready(self, timeout: float = 60) -> None:
        def ready() -> bool:
            assert self.process.poll() is None, self.output()
            return get(self.port, "/readyz")[0] == 200

        wait_until(ready, timeout, "the dashboard to have read the reports", step=0.2)

    def api(self, path: str) -> Any:
        status, body = get(self.port, path)
        assert status == 200, (path, status, body[:300])
        return json.loads(body)

    def fleet(self) -> Any:
        return self.api("/api/fleet")

    def post(
        self,
        path: str,
        body: dict[str, Any],
        token: str | None = TOKEN,
        operator: str | None = "ann",
    ) -> tuple[int, Any]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        if operator is not None:
            request.add_header("X-Kafkaworker-Operator", operator)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def command(self, action: str, **target: Any) -> str:
        status, body = self.post(f"/api/commands/{action}", target)
        assert status == 202, body
        return str(body["id"])


@pytest.fixture
def fleet_suffix() -> str:
    return uuid.uuid4().hex[:8]


@pytest.fixture
def dashboard(kafka_bootstrap: str) -> Iterator[Callable[..., DashboardProcess]]:
    started: list[DashboardProcess] = []

    def start(fleet: dict[str, Any], *, control: bool = True, **env: str) -> DashboardProcess:
        one = DashboardProcess(kafka_bootstrap, fleet, control=control, **env)
        started.append(one)
        one.wait_ready()
        return one

    yield start
    for one in started:
        one.stop()


def processes(dashboard: DashboardProcess, **match: Any) -> list[dict[str, Any]]:
    """The processes /api/fleet shows whose fields equal `match`."""
    return [
        p
        for p in dashboard.fleet()["processes"]
        if all(p.get(key) == value for key, value in match.items())
    ]


class WorkerProcess(Process):
    """A `kafkaworker run tests.fleet.fleetapp:app` process reporting to the fleet."""

    def __init__(
        self,
        bootstrap: str,
        fleet: dict[str, Any],
        *,
        app: str,
        topic: str,
        record: Path,
        broken: Path,
        processes: int = 1,
    ) -> None:
        self.record = record
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("KAFKAWORKER_")},
            "PYTHONPATH": str(ROOT),
            "KAFKAWORKER_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
            "KAFKAWORKER_COMMIT_INTERVAL": "0.2",
            "KAFKAWORKER_STARTUP_TIMEOUT": "60",
            "KAFKAWORKER_DASHBOARD__TOKEN": TOKEN,
            **as_env("KAFKAWORKER_FLEET__", fleet),
            "FLEET_APP": app,
            "FLEET_TOPIC": topic,
            "FLEET_RECORD": str(record),
            "FLEET_BROKEN": str(broken),
        }
        args = ["run", "tests.fleet.fleetapp:app", "--processes", str(processes)]
        super().__init__(args, env, f"worker-{app}")

    def handled(self, topic: str) -> list[str]:
        """The ids of the records of `topic` this process handled."""
        if not self.record.exists():
            return []
        lines = [line.split() for line in self.record.read_text().splitlines()]
        return [
            parts[4]
            for parts in lines
            if len(parts) == 5 and parts[0] == str(self.pid) and parts[1] == topic
        ]


@pytest.fixture
def fleet_worker(kafka_bootstrap: str) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(fleet: dict[str, Any], **options: Any) -> WorkerProcess:
        """`options`: WorkerProcess's (app, topic, record, broken, processes)."""
        one = WorkerProcess(kafka_bootstrap, fleet, **options)
        started.append(one)
        return one

    yield start
    for one in started:
        one.stop()

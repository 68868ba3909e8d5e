"""Fixtures of the dashboard tests: real `kafkaworker run` processes of tests/dashboard/
dashapp.py against the session's broker, and (test_browser.py) Debian's Chromium driven by
Playwright.

Browser tests are marked `browser`. Without Chromium or Playwright they are skipped with one
line saying how to install them; with CI set that is a failure instead (CI must run them), and
as root in CI a missing Chromium is installed first (tools/install_chromium.py, idempotent).
Each browser test leaves a full-page screenshot under build/dashboard/screenshots/.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from tests.metrics_support import get
from tests.support import install_in_ci, unavailable
from tools.install_chromium import HOW, chromium_path, install

ROOT = Path(__file__).resolve().parent.parent.parent
BUILD = ROOT / "build" / "dashboard"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "browser: drives the dashboard page in a real Chromium (Playwright)"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def api(port: int, path: str) -> Any:
    status, body = get(port, path)
    assert status == 200, (path, status, body[:200])
    return orjson.loads(body)


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll `predicate` until truthy (the worker's views refresh once a second)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


class Worker:
    """A `kafkaworker run tests.dashboard.dashapp:app` process with its metrics port."""

    def __init__(self, bootstrap: str, topic: str, *, processes: int = 1, **env: str) -> None:
        self.port = free_port()
        self.topic = topic
        BUILD.mkdir(parents=True, exist_ok=True)
        self.log = BUILD / f"worker-{topic}.log"
        self.env = {
            **os.environ,
            "KAFKAWORKER_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
            "KAFKAWORKER_COMMIT_INTERVAL": "0.2",
            "KAFKAWORKER_STARTUP_TIMEOUT": "60",
            "KAFKAWORKER_METRICS__HOST": "127.0.0.1",
            "DASH_TOPIC": topic,
            "DASH_GROUP": f"dash-{topic}",
            **env,
        }
        command = [sys.executable, "-m", "kafkaworker", "run", "tests.dashboard.dashapp:app"]
        command += ["--metrics-port", str(self.port)]
        if processes > 1:
            command += ["--processes", str(processes)]
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(
                command, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT
            )

    def status(self) -> Any:
        return api(self.port, "/api/status")

    def failures(self) -> Any:
        return api(self.port, "/api/failures")

    def handler(self) -> dict[str, Any]:
        rows = [h for h in self.status()["handlers"] if h["name"] == "handle_order"]
        return rows[0] if rows else {}

    def wait_ready(self, timeout: float = 90) -> None:
        def ready() -> bool:
            assert self.process.poll() is None, self.output()
            return get(self.port, "/readyz")[0] == 200

        wait_for(ready, timeout, "the worker to be ready")

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(40)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait()


@pytest.fixture
def topic(admin: AdminClient) -> Iterator[Callable[[int], str]]:
    created: list[str] = []

    def create(partitions: int = 2) -> str:
        name = f"dash-{uuid.uuid4().hex[:8]}"
        for future in admin.create_topics([NewTopic(name, partitions, 1)]).values():
            future.result(30)
        created.append(name)
        return name

    yield create
    if created:
        admin.delete_topics([*created, *(f"{t}.dlq" for t in created)])


@pytest.fixture
def worker(kafka_bootstrap: str) -> Iterator[Callable[..., Worker]]:
    started: list[Worker] = []

    def start(topic: str, **options: Any) -> Worker:
        one = Worker(kafka_bootstrap, topic, **options)
        started.append(one)
        return one

    yield start
    for one in started:
        one.stop()


def send(
    bootstrap: str,
    topic: str,
    orders: list[dict[str, Any]],
    *,
    partition: int | None = None,
    headers: list[tuple[str, bytes]] | None = None,
) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for order in orders:
        extra: dict[str, Any] = {} if partition is None else {"partition": partition}
        producer.produce(
            topic,
            orjson.dumps(order),
            key=f"customer-{order['id'] % 3}".encode(),
            headers=headers or [],
            **extra,
        )
    assert producer.flush(30) == 0


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """Debian's Chromium, headless, driven by Playwright (never a downloaded browser).

    Per module, not per session: Playwright's sync API keeps an event loop running in the
    main thread while it is open, and every later test calling asyncio.run() failed with
    "cannot be called from a running event loop" (tests/unit runs after tests/dashboard)."""
    path = install_in_ci(chromium_path(), install, "Chromium")
    try:
        from playwright.sync_api import sync_playwright  # noqa: PLC0415 - optional
    except ImportError:
        path = None
    if path is None:
        unavailable("Chromium and Playwright", HOW)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=path)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(chromium: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh page; its screenshot is saved when the test ends, passed or failed."""
    context = chromium.new_context(viewport={"width": 1400, "height": 1000})
    tab = context.new_page()
    try:
        yield tab
    finally:
        shots = BUILD / "screenshots"
        shots.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(Exception):  # a crashed page must not hide the test's error
            tab.screenshot(path=str(shots / f"{request.node.name}.png"), full_page=True)
        context.close()

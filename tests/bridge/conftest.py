"""The gRPC bridge (apps/bridge) as a real process on a free port, talked to over a real gRPC
channel, against the suite's broker.

grpcio and its health/reflection packages come with the `bridge` extra (and `dev`): without
them these tests skip saying so, except in CI (CI set), where that is a failure.
"""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from kafkaworker.testing.jvm import free_port

ROOT = Path(__file__).resolve().parents[2]
_MISSING = [
    name
    for name in ("grpc", "grpc_health", "grpc_reflection", "google.protobuf")
    if importlib.util.find_spec(name.split(".")[0]) is None
]
if _MISSING:
    _HINT = f"{', '.join(_MISSING)} not installed: pip install -e '.[bridge]' (or '.[dev]')"
    if os.environ.get("CI"):
        raise ImportError(_HINT)
    collect_ignore_glob = ["test_*.py"]
    print(f"tests/bridge skipped: {_HINT}", file=sys.stderr)


class BridgeProcess:
    """`python -m apps.bridge` in its own process; its log is read as it is written, so tests
    wait for a line instead of sleeping."""

    def __init__(self, bootstrap: str, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "apps.bridge", "--port", str(self.port), *args],
            cwd=ROOT,
            env={
                **os.environ,
                "KAFKAWORKER_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
                **(env or {}),
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        # Owned here: ends when the process closes its output, i.e. when it exits.
        self._reader = threading.Thread(target=self._read, name="bridge-log", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for_line(self, pattern: str, timeout: float = 30.0, start: int = 0) -> str:
        """The first log line from index `start` matching `pattern`; fails with the log."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines[start:]:
                    if regex.search(line):
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or (self.process.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(
                        f"no line matching {pattern!r} within {timeout}s; log:\n{self.output()}"
                    )
                self._changed.wait(left)

    def output(self) -> str:
        return "\n".join(self.lines)

    def started(self, timeout: float = 30.0) -> BridgeProcess:
        self.wait_for_line(r"bridge started", timeout)
        return self

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM, then the exit code (the process is killed if it is not gone in time)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"the bridge did not exit within {timeout}s of SIGTERM; log:\n{self.output()}"
            ) from None
        finally:
            self._reader.join(5)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


BridgeFactory = Callable[..., BridgeProcess]


@pytest.fixture
def start_bridge(kafka_bootstrap: str) -> Iterator[BridgeFactory]:
    """start_bridge(*args, bootstrap=..., env=...): a started bridge, stopped after the test
    (which fails if it does not exit 0 on SIGTERM, unless the test ended it itself)."""
    started: list[BridgeProcess] = []

    def start(*args: str, bootstrap: str | None = None, **options: Any) -> BridgeProcess:
        bridge = BridgeProcess(bootstrap or kafka_bootstrap, *args, **options)
        started.append(bridge)
        return bridge.started()

    yield start
    for bridge in started:
        if bridge.process.poll() is None:
            code = bridge.terminate()
            assert code == 0, f"the bridge exited with {code}; log:\n{bridge.output()}"


def committed_records(
    bootstrap: str,
    topic: str,
    partitions: int,
    timeout: float = 30.0,
    isolation: str = "read_committed",
) -> list[Any]:
    """Every record of `topic` a read_committed consumer sees: all of them, not a count given
    in advance, so a record that should not be there is found. Read until each partition's
    position reaches its last stable offset (the bridge writes in transactions: the offsets
    of their commit markers hold no record). read_uncommitted: aborted records too."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"committed-{time.time()}",
            "isolation.level": isolation,
            "enable.auto.commit": False,
        }
    )
    parts = [TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)]
    records: list[Any] = []
    try:
        ends = {p.partition: consumer.get_watermark_offsets(p, timeout=10)[1] for p in parts}
        consumer.assign(parts)
        deadline = time.monotonic() + timeout
        while True:
            positions = {p.partition: p.offset for p in consumer.position(parts)}
            if all(positions[p] >= end for p, end in ends.items()):
                return records
            assert time.monotonic() < deadline, f"read {positions} of {ends} on {topic}"
            records.extend(r for r in consumer.consume(100, timeout=0.2) if r.error() is None)
    finally:
        consumer.close()

"""Helpers shared by the integration and fault tests: produce, await, read commits, run apps."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import pytest
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)

from kafkaworker import App, Settings
from kafkaworker.runtime.runner import Runner
from kafkaworker.testing.worker import running as run_in_background

ROOT = Path(__file__).resolve().parent.parent
# Where the bodies of async test handlers run (see as_kind): enough threads that no test's
# handlers wait for one another's.
_BODIES = ThreadPoolExecutor(max_workers=64, thread_name_prefix="async-body")
F = TypeVar("F", bound=Callable[..., Any])


def as_kind(kind: str, func: F) -> F:
    """`func` as a handler of `kind`: itself ("sync"), or an `async def` with its name and
    signature that awaits it in a thread ("async"). One test body then checks both kinds of
    handler, blocking calls and all, without blocking the event loop."""
    if kind == "sync":
        return func
    assert kind == "async", kind

    @functools.wraps(func)
    async def handler(arg: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(_BODIES, func, arg)

    return handler  # type: ignore[return-value]


def of_kind(kind: str) -> Callable[[F], F]:
    """as_kind as a decorator, under @app.handler(...): `@of_kind(kind)`."""
    return functools.partial(as_kind, kind)  # type: ignore[return-value]


IN_CI = os.environ.get("CI", "").lower() not in {"", "0", "false", "no"}
T = TypeVar("T")


def install_in_ci(found: T | None, install: Callable[[], T], what: str) -> T | None:
    """`found`; or, when missing in CI as root, what `install()` installs (tools/install_*.py:
    Debian packages); a failed install fails the test."""
    if found is None and IN_CI and os.geteuid() == 0:
        try:
            return install()
        except (SystemExit, OSError, subprocess.CalledProcessError) as exc:
            pytest.fail(f"installing {what} failed: {exc}")
    return found


def unavailable(what: str, how: str) -> NoReturn:
    """Skip, saying how to install `what`; in CI fail instead (CI must run every test)."""
    if IN_CI:
        pytest.fail(f"these tests need {what} in CI: {how}")
    pytest.skip(how)


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, step: float = 0.05) -> Any:
    """Poll `predicate` until it is truthy; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(step)


def produce(
    bootstrap: str,
    topic: str,
    values: Sequence[bytes],
    *,
    keys: Sequence[bytes | None] | None = None,
    partitions: Sequence[int] | None = None,
) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    errors: list[Any] = []
    for i, value in enumerate(values):
        kwargs: dict[str, Any] = {}
        if keys is not None:
            kwargs["key"] = keys[i]
        if partitions is not None:
            kwargs["partition"] = partitions[i]
        while True:
            try:
                producer.produce(
                    topic, value, on_delivery=lambda e, _m: e and errors.append(e), **kwargs
                )
                break
            except BufferError:  # librdkafka's queue is full (a loaded machine): drain some
                producer.poll(0.1)
        if i % 10_000 == 0:
            producer.poll(0)
    assert producer.flush(60) == 0
    assert errors == []


def read_topic(bootstrap: str, topic: str, count: int, timeout: float = 30) -> list[Any]:
    """The first `count` records of `topic` (fails if fewer arrive within `timeout`), read
    read_committed from the start of every partition. Assigned, not subscribed: no group to
    join (a second or more each, under load), and a topic the worker creates later is waited
    for here, not at librdkafka's next metadata refresh."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "kafkaworker-tests-reader",  # never joined nor committed
            "enable.auto.commit": False,
        }
    )
    records: list[Any] = []
    deadline = time.monotonic() + timeout
    assigned = 0
    try:
        while len(records) < count and time.monotonic() < deadline:
            if not assigned:
                found = consumer.list_topics(topic, timeout=5).topics.get(topic)
                if found is None or found.error is not None or not found.partitions:
                    time.sleep(0.2)
                    continue
                assigned = len(found.partitions)
                consumer.assign(
                    [TopicPartition(topic, p, OFFSET_BEGINNING) for p in found.partitions]
                )
            for record in consumer.consume(count - len(records), timeout=0.5):
                if record.error() is None:
                    records.append(record)
        # Said on failure: did the records never reach the topic, or not this reader?
        ends = (
            [_log_end(consumer, topic, p) for p in range(assigned)] if len(records) < count else []
        )
    finally:
        consumer.close()
    assert len(records) >= count, (
        f"{len(records)} of {count} records arrived on {topic} "
        f"({assigned} partitions, log ends {ends})"
    )
    return records


def _log_end(consumer: Consumer, topic: str, partition: int) -> int | str:
    try:
        return int(consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=5)[1])
    except KafkaException as exc:
        return f"unknown ({exc.args[0].str()})"


def committed(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    """The group's committed offset per partition (-1001 where none)."""
    return {p: offset for p, (offset, _) in commits(bootstrap, group, topic, partitions).items()}


def commits(
    bootstrap: str, group: str, topic: str, partitions: int
) -> dict[int, tuple[int, str | None]]:
    """The group's committed offset and its metadata per partition (-1001 where none)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    # Past a transaction's timeout (10 s under exactly_once) and the broker's clean-up of it
    # (transaction.abort.timed.out.transaction.cleanup.interval.ms, 10 s).
    deadline = time.monotonic() + 30
    try:
        while True:
            try:
                tps = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], 10)
                break
            except KafkaException as exc:
                # The group coordinator may be loading or moving (fresh broker): retriable.
                # _TIMED_OUT: offsets a transaction left pending (a member frozen between
                # sending them and committing) hold a stable read (KIP-447's require_stable)
                # until the broker aborts that transaction.
                if (
                    not exc.args[0].retriable()
                    and exc.args[0].code()
                    not in (
                        KafkaError.NOT_COORDINATOR,
                        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
                        KafkaError._TIMED_OUT,
                    )
                ) or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    finally:
        consumer.close()
    return {tp.partition: (tp.offset, tp.metadata) for tp in tps}


def end_offsets(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "end-offsets"})
    try:
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(partitions)
        }
    finally:
        consumer.close()


def make_settings(bootstrap: str, **overrides: Any) -> Settings:
    """Settings for in-process runs: fast commits and shutdown, no settings.yaml involved."""
    values: dict[str, Any] = {
        "kafka": {"bootstrap_servers": bootstrap},
        "commit_interval": 0.2,
        "shutdown_timeout": 10.0,
        "startup_timeout": 10.0,
        "log_level": "WARNING",
    }
    values.update(overrides)
    return Settings.model_validate(values)


def running(app: App, settings: Settings) -> AbstractContextManager[Runner]:
    """Run `app` in a background thread; stop it gracefully on exit and check it exited 0
    (the package's own helper, which the pytest plugin's kafka_worker fixture uses too)."""
    return run_in_background(app, settings)


@dataclass
class Record:
    """One handled message, as written by tests/apps/recorder.py."""

    pid: int
    partition: int
    offset: int
    key: str
    started: float
    finished: float


def read_records(path: Path) -> list[Record]:
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        parts = line.split(" ")
        if len(parts) != 6:
            continue  # a line cut by kill -9 mid-write: not a finished record
        pid, partition, offset, key, started, finished = parts
        records.append(
            Record(int(pid), int(partition), int(offset), key, float(started), float(finished))
        )
    return records


class WorkerProcess:
    """A real `kafkaworker run tests.apps.recorder:app` subprocess."""

    def __init__(self, bootstrap: str, topic: str, record: Path, **env: str) -> None:
        self.env = {
            **os.environ,
            "KAFKAWORKER_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
            "KAFKAWORKER_COMMIT_INTERVAL": "0.2",
            # A member killed with SIGKILL stays in the group until its session times out.
            "KAFKAWORKER_KAFKA__CONSUMER": '{"session.timeout.ms": 6000, '
            '"heartbeat.interval.ms": 1000}',
            "KAFKAWORKER_LOG_LEVEL": "INFO",
            # A broker just started on a loaded 2-core machine can take more than the 15 s
            # default to answer a worker's first request.
            "KAFKAWORKER_STARTUP_TIMEOUT": "60",
            "RECORDER_TOPIC": topic,
            "RECORDER_FILE": str(record),
            **env,
        }
        self.log = record.with_suffix(f".{len(list(record.parent.glob('*.log')))}.log")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "kafkaworker", "run", "tests.apps.recorder:app"],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def signal(self, signum: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def exited(self) -> bool:
        return self.process is not None and self.process.poll() is not None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


_QUIET = logging.getLogger("tests.feed")
_QUIET.addHandler(logging.NullHandler())
_QUIET.propagate = False


class Feed:
    """Keyed records produced steadily from a thread until stopped; what the broker
    acknowledged is `acked`. Delivery is retried for two minutes, so records sent while the
    broker is down are delivered once it is back."""

    def __init__(self, bootstrap: str, topic: str, rate: float = 1500) -> None:
        self.acked: set[tuple[int, int]] = set()
        self.unplaced = 0  # acknowledged without an offset (see _delivered)
        self.failed = 0
        self.errors: list[str] = []
        self._producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "acks": "all",
                "enable.idempotence": True,
                "linger.ms": 5,
                "message.timeout.ms": 120_000,
                "reconnect.backoff.max.ms": 500,
                # "Connect ... failed" every backoff while a test keeps the broker down.
                "logger": _QUIET,
            }
        )
        self._topic, self._rate = topic, rate
        self._stop = threading.Event()
        self._paused = threading.Event()
        self._thread = threading.Thread(target=self._run, name="feed", daemon=True)
        self._thread.start()

    def _delivered(self, error: object, msg: object) -> None:
        offset = msg.offset()  # type: ignore[attr-defined]
        if error is None and (offset is None or offset < 0):
            # Delivered, but the broker did not say where: librdkafka acknowledges an
            # idempotent retry of a batch the broker already had (a duplicate sequence after a
            # leader change) without its offset. The record is in the log; the tests' check
            # that the group committed to the log's end covers it.
            self.unplaced += 1
        elif error is None:
            self.acked.add((msg.partition(), offset))  # type: ignore[attr-defined]
        else:
            self.failed += 1
            self.errors.append(str(error))

    def status(self) -> str:
        """For a failed wait: whether the feed itself was still delivering."""
        return f"feed: {len(self.acked)} acked, {self.failed} failed {self.errors[-3:]}"

    def _run(self) -> None:
        sent = 0
        started = time.monotonic()
        while not self._stop.is_set():
            if self._paused.is_set():
                self._producer.poll(0.05)
                started = time.monotonic() - sent / self._rate  # no catching up afterwards
                continue
            key = b"k%d" % (sent % 64)
            try:
                self._producer.produce(
                    self._topic, b"%d" % sent, key=key, on_delivery=self._delivered
                )
                sent += 1
            except BufferError:
                pass
            self._producer.poll(0)
            ahead = sent / self._rate - (time.monotonic() - started)
            if ahead > 0:
                self._stop.wait(ahead)

    @contextmanager
    def paused(self) -> Iterator[None]:
        """No new records meanwhile; on entry, every record sent before is acknowledged."""
        self._paused.set()
        try:
            wait_until(lambda: len(self._producer) == 0, 60, "the feed's records acknowledged")
            yield
        finally:
            self._paused.clear()

    def stop(self) -> None:
        """Stop producing and wait for every acknowledgement (again: a no-op)."""
        self._stop.set()
        self._thread.join(10)
        assert self._producer.flush(150) == 0


def wait_drained(
    bootstrap: str,
    topic: str,
    partitions: int,
    *,
    group: str,
    acked: set[tuple[int, int]],
    record: Path,
) -> None:
    """Wait until every acknowledged record is handled and the group committed to the end of
    the log (a fault test's last check before SIGTERM)."""
    wait_until(
        lambda: acked <= {(r.partition, r.offset) for r in read_records(record)},
        120,
        "every acknowledged record handled",
        0.5,
    )
    wait_until(
        lambda: (
            committed(bootstrap, group, topic, partitions)
            == end_offsets(bootstrap, topic, partitions)
        ),
        60,
        "the group committed to the end of the log",
        0.5,
    )


FAULTS_REPORT = ROOT / "build" / "faults.jsonl"


def report_fault(
    scenario: str,
    messages: int,
    lost: int,
    duplicates: int,
    recovery: float | None,
    *,
    per_kill: Sequence[tuple[int, int, int]] | None = None,
) -> None:
    """One row of the fault table (`make faults` prints it; docs/reliability.md keeps the
    latest): appended as a JSON line, so concurrent test processes never interleave.
    `per_kill`: for each kill -9, (duplicates, messages in flight, finished and not
    committed)."""
    FAULTS_REPORT.parent.mkdir(parents=True, exist_ok=True)
    row = {
        "scenario": scenario,
        "messages": messages,
        "lost": lost,
        "duplicates": duplicates,
        "recovery_s": None if recovery is None else round(recovery, 1),
        "per_kill": None if per_kill is None else [list(kill) for kill in per_kill],
    }
    with open(FAULTS_REPORT, "a") as out:
        out.write(json.dumps(row) + "\n")

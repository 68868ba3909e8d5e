"""What the fleet's reports cost a worker: bytes a second, CPU, and S1's throughput.

    python -m benchmarks.fleet_cost [--bootstrap HOST:PORT] [--data-dir DIR] [--messages N]

1. Size: a worker with three handlers of four partitions each (a typical pod) reports for
   `--seconds` every interval; the reports are read back from the topic: bytes per report and
   per second at the default 5 s interval. With `--data-dir` (the broker's log.dirs) the
   reports partition's growth on disk is the figure after lz4 compression and batch framing.
2. CPU: the kw-fleet thread's CPU time per report (/proc/self/task/<tid>/stat), reporting
   every 0.1 s to have many.
3. S1 (a backlog of JSON records, a decode-only handler, 8 partitions): msg/s with the fleet
   off and on, alternating, with reports every 0.1 s (50 times the default rate, so that an
   effect, if any, is not hidden in the noise).

Results: benchmarks/results/fleet.md. Without --bootstrap, a broker is started for the run.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import statistics
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from kafkaworker import App, Message, Settings
from kafkaworker.runtime.runner import Runner, resolve_specs
from kafkaworker.testing.broker import Cluster

RESULTS = Path(__file__).resolve().parent / "results"
TICKS = os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def broker(bootstrap: str | None, data_dir: Path | None) -> Iterator[tuple[str, Path | None]]:
    """The brokers, and their log.dirs when known (a broker started here: its own)."""
    if bootstrap:
        yield bootstrap, data_dir
        return
    cluster = Cluster(1)
    cluster.start()
    try:
        yield cluster.bootstrap, cluster.nodes[0].data_dir / "data"
    finally:
        cluster.cleanup()


def topics(bootstrap: str, count: int, partitions: int) -> list[str]:
    names = [f"fleet-cost-{uuid.uuid4().hex[:8]}" for _ in range(count)]
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(n, partitions, 1) for n in names]).values():
        future.result(30)
    return names


def settings(bootstrap: str, fleet: dict[str, Any] | None) -> Settings:
    return Settings.model_validate(
        {
            "kafka": {"bootstrap_servers": bootstrap},
            "log_level": "WARNING",
            **({"fleet": fleet} if fleet else {}),
        }
    )


def fleet_settings(interval: float) -> dict[str, Any]:
    suffix = uuid.uuid4().hex[:8]
    return {
        "enabled": True,
        "interval": interval,
        **{
            key: f"fleet-cost-{suffix}.{key}"
            for key in ("topic", "errors_topic", "commands_topic", "audit_topic")
        },
    }


def thread_cpu(name: str) -> float:
    """CPU seconds of this process's thread called `name` (its native thread's stat)."""
    thread = next(t for t in threading.enumerate() if t.name == name)
    with open(f"/proc/self/task/{thread.native_id}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def run(app: App, config: Settings, until: threading.Event, probe: Any = None) -> Any:
    runner = Runner(app, config, resolve_specs(app, config))
    result: list[Any] = []

    def stop() -> None:
        until.wait()
        if probe is not None:
            result.append(probe())
        runner.stop()

    threading.Thread(target=stop, daemon=True).start()
    assert runner.run() == 0
    return result[0] if result else None


def report_sizes(bootstrap: str, topic: str) -> list[int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": uuid.uuid4().hex})
    try:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
        consumer.assign([TopicPartition(topic, 0, low)])
        sizes: list[int] = []
        while len(sizes) < high - low:
            for record in consumer.consume(500, 1.0):
                if record.error() is None:
                    sizes.append(len(record.value() or b"") + len(record.key() or b""))
        return sizes
    finally:
        consumer.close()


def typical_pod(bootstrap: str) -> App:
    app = App("fleet-cost")
    for n, topic in enumerate(topics(bootstrap, 3, 4)):

        def handle(msg: Message[Any]) -> None:
            pass

        handle.__name__ = f"handle_{n}"
        app.handler(topic, dlq=f"{topic}.dlq")(handle)
    return app


def disk_bytes(data_dir: Path | None, topic: str) -> int | None:
    if data_dir is None:
        return None
    return sum(p.stat().st_size for p in data_dir.glob(f"**/{topic}-0/*.log"))


def size_and_cpu(bootstrap: str, seconds: float, data_dir: Path | None) -> dict[str, Any]:
    app = typical_pod(bootstrap)
    fleet = fleet_settings(5.0)
    done = threading.Event()
    threading.Timer(seconds, done.set).start()
    run(app, settings(bootstrap, fleet), done)
    sizes = report_sizes(bootstrap, fleet["topic"])[1:-1]  # not the first (starting), not the last
    on_disk = disk_bytes(data_dir, fleet["topic"])

    fast = fleet_settings(0.1)
    done = threading.Event()
    threading.Timer(seconds, done.set).start()
    cpu = run(
        typical_pod(bootstrap),
        settings(bootstrap, fast),
        done,
        probe=lambda: thread_cpu("kw-fleet"),
    )
    reports = len(report_sizes(bootstrap, fast["topic"]))
    mean = statistics.mean(sizes)
    found = {
        "reports": len(sizes) + 2,
        "report_bytes_mean": round(mean),
        "report_bytes_max": max(sizes),
        "bytes_per_second_at_5s": round(mean / 5.0, 1),
        "cpu_ms_per_report": round(cpu * 1000 / reports, 3),
        "cpu_share_at_5s": f"{cpu / reports / 5.0:.5%}",
    }
    if on_disk is not None:
        found["disk_bytes_per_report"] = round(on_disk / (len(sizes) + 2))
    return found


def s1(bootstrap: str, messages: int, repeats: int) -> dict[str, list[float]]:
    [topic] = topics(bootstrap, 1, 8)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    for i in range(messages):
        value = orjson.dumps({"id": i, "name": "x" * 40})
        while True:
            try:
                producer.produce(topic, value, key=str(i % 100))
                break
            except BufferError:  # librdkafka's queue is full: let it send
                producer.poll(0.1)
    producer.flush(60)
    rates: dict[str, list[float]] = {"off": [], "on": []}
    for _ in range(repeats):
        for mode in ("off", "on"):
            fleet = fleet_settings(0.1) if mode == "on" else None
            rates[mode].append(s1_once(bootstrap, topic, messages, fleet))
    return rates


def s1_once(bootstrap: str, topic: str, messages: int, fleet: dict[str, Any] | None) -> float:
    """One S1 run: msg/s from the first record handled to the last."""
    app = App("s1-fleet-on" if fleet else "s1-fleet-off")
    done = threading.Event()
    counter = itertools.count(1)  # next() is atomic: the worker threads share it
    started = [0.0]

    @app.handler(topic, group=f"s1-{uuid.uuid4().hex[:8]}")
    def handle(msg: Message[Any]) -> None:
        msg.value  # noqa: B018 - decoding is the work
        seen = next(counter)
        if seen == 1:
            started[0] = time.perf_counter()
        elif seen >= messages:
            done.set()

    run(app, settings(bootstrap, fleet), done)
    return round(messages / (time.perf_counter() - started[0]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bootstrap")
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--messages", type=int, default=300_000)
    parser.add_argument("--repeats", type=int, default=3)
    a = parser.parse_args()
    with broker(a.bootstrap, a.data_dir) as (bootstrap, data_dir):
        found = size_and_cpu(bootstrap, a.seconds, data_dir)
        print(found)
        rates = s1(bootstrap, a.messages, a.repeats)
        print(rates)
    lines = [
        "# The fleet's cost (benchmarks/fleet_cost.py)",
        "",
        "A worker with 3 handlers x 4 partitions, reporting every 5 s (sizes) and every 0.1 s "
        "(CPU); S1 (decode-only handler, 8 partitions) with the fleet off and on (reports every "
        f"0.1 s), alternating, {a.repeats} runs each, {a.messages:,} records.",
        "",
        "| figure | value |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in found.items()),
        f"| S1 fleet off, msg/s | {', '.join(f'{r:,}' for r in rates['off'])} "
        f"(median {statistics.median(rates['off']):,.0f}) |",
        f"| S1 fleet on, msg/s | {', '.join(f'{r:,}' for r in rates['on'])} "
        f"(median {statistics.median(rates['on']):,.0f}) |",
    ]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "fleet.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

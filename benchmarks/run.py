"""`make bench`: kafkaworker side by side with the raw client (and peers), same broker, one run.

    python -m benchmarks.run [--smoke] [--scenarios s1,s2,s4,s5] [--peers none|all|a,b]
                             [--messages N] [--bootstrap HOST:PORT]

Produces each dataset once, runs every contender in its own process with its own consumer
group, prints absolute figures and ratios (timings here are noisy: ratios from one run are
what counts), and saves JSON, a Markdown table and (with matplotlib) a PNG chart under
benchmarks/results/. `--smoke` is the tiny version `make test` runs so the suite cannot rot.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from benchmarks import peers as peer_envs
from tools.kafka.broker import Cluster

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CONTENDERS = HERE / "contenders"
RESULTS = HERE / "results"
PARTITIONS = 8


@dataclass
class Contender:
    name: str
    script: str
    python: str
    options: dict[str, str]


def new_topic(bootstrap: str, prefix: str, partitions: int = PARTITIONS) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, partitions, 1)])[name].result(timeout=30)
    return name


def payload(i: int, ts: float = 0.0) -> bytes:
    # About 100 bytes of JSON.
    return orjson.dumps({"id": i, "ts": ts, "customer": f"c-{i % 1000}", "pad": "x" * 40})


def produce_backlog(bootstrap: str, topic: str, count: int, *, keys: int = 0) -> float:
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 20,
            "batch.num.messages": 10000,
            "queue.buffering.max.messages": 500000,
        }
    )
    started = time.monotonic()
    for i in range(count):
        key = f"k{i % keys}".encode() if keys else None
        while True:
            try:
                producer.produce(
                    topic, payload(i), key=key, partition=-1 if keys else i % PARTITIONS
                )
                break
            except BufferError:
                producer.poll(0.01)
    producer.flush(120)
    return time.monotonic() - started


def produce_at_rate(
    bootstrap: str, topic: str, rate: int, count: int, stop: threading.Event
) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
    interval = 1.0 / rate
    next_at = time.monotonic()
    for i in range(count):
        if stop.is_set():
            break
        producer.produce(topic, payload(i, time.time()), partition=i % PARTITIONS)
        producer.poll(0)
        next_at += interval
        delay = next_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    producer.flush(30)


def run_contender(
    contender: Contender,
    bootstrap: str,
    topic: str,
    messages: int,
    timeout: float,
    *,
    group: str | None = None,
    **options: str,
) -> dict[str, Any]:
    out = Path(tempfile.mkstemp(suffix=".json")[1])
    command = [
        contender.python,
        str(CONTENDERS / contender.script),
        "--bootstrap",
        bootstrap,
        "--topic",
        topic,
        "--group",
        group or f"bench-{uuid.uuid4().hex[:8]}",
        "--messages",
        str(messages),
        "--out",
        str(out),
    ]
    for key, value in {**contender.options, **options}.items():
        command += [f"--{key}", value]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    workdir = tempfile.mkdtemp(prefix="bench-")  # peers (Faust) write state where they run
    try:
        completed = subprocess.run(
            command,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=workdir,
        )
    except subprocess.TimeoutExpired:
        return {"contender": contender.name, "error": f"timed out after {timeout:.0f}s"}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if completed.returncode != 0 or not out.read_text():
        tail = (completed.stderr or completed.stdout).strip().splitlines()[-3:]
        return {
            "contender": contender.name,
            "error": f"exit {completed.returncode}: " + " | ".join(tail),
        }
    result: dict[str, Any] = json.loads(out.read_text())
    result["contender"] = contender.name
    out.unlink()
    return result


def scenario_s1(
    bootstrap: str, contenders: list[Contender], messages: int, log: Callable[[str], None]
) -> list[dict[str, Any]]:
    topic = new_topic(bootstrap, "s1")
    seconds = produce_backlog(bootstrap, topic, messages)
    log(f"S1: produced {messages} messages in {seconds:.1f}s")
    results = []
    for contender in contenders:
        result = run_contender(contender, bootstrap, topic, messages, timeout=900)
        log(f"S1: {contender.name}: {_short(result)}")
        results.append(result)
    return results


def scenario_s2(
    bootstrap: str, contenders: list[Contender], messages: int, log: Callable[[str], None]
) -> list[dict[str, Any]]:
    topic = new_topic(bootstrap, "s2")
    produce_backlog(bootstrap, topic, messages, keys=1000)
    sleep_ms = 2.0
    results = []
    for contender in contenders:
        runs = (
            [(o, c) for o in ("partition", "key", "none") for c in (8, 32, 128)]
            if contender.script == "kafkaworker_app.py"
            else [("", 0)]
        )
        for ordering, concurrency in runs:
            options = {"sleep_ms": str(sleep_ms)}
            if ordering:
                options |= {"ordering": ordering, "concurrency": str(concurrency)}
            result = run_contender(contender, bootstrap, topic, messages, timeout=900, **options)
            if "error" not in result:
                ceiling = _s2_ceiling(ordering, concurrency, sleep_ms)
                result["efficiency"] = result["msgs_per_s"] / ceiling if ceiling else None
            result["label"] = (
                f"{contender.name} {ordering}/{concurrency}" if ordering else contender.name
            )
            log(
                f"S2: {result['label']}: {_short(result)} "
                f"efficiency={result.get('efficiency') or 0:.2f}"
            )
            results.append(result)
    return results


def _s2_ceiling(ordering: str, concurrency: int, sleep_ms: float) -> float:
    """What the ordering allows: one message at a time per partition, per key, or none."""
    if not ordering:
        return 0.0
    lanes = {"partition": PARTITIONS, "key": 1000, "none": concurrency}[ordering]
    return min(concurrency, lanes) / (sleep_ms / 1000)


def scenario_s3(
    bootstrap: str, messages: int, log: Callable[[str], None], processes: tuple[int, ...] = (1, 2)
) -> list[dict[str, Any]]:
    """CPU-bound: one process against --processes N, through the real supervisor."""
    results = []
    for count in processes:
        topic = new_topic(bootstrap, "s3")
        produce_backlog(bootstrap, topic, messages)
        progress = Path(tempfile.mkdtemp(prefix="bench-s3-"))
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "BENCH_TOPIC": topic,
            "BENCH_GROUP": f"bench-{uuid.uuid4().hex[:8]}",
            "BENCH_DIR": str(progress),
            "BENCH_BURN_US": "200",
            "KAFKAWORKER_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
            "KAFKAWORKER_LOG_LEVEL": "WARNING",
        }
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kafkaworker",
                "run",
                "benchmarks.contenders.cpu_app:app",
                "--processes",
                str(count),
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def state(progress: Path = progress) -> list[dict[str, float]]:
            found = []
            for path in progress.glob("*.json"):
                with contextlib.suppress(ValueError):  # being replaced right now
                    found.append(json.loads(path.read_text()))
            return found

        deadline = time.monotonic() + 600
        while sum(p["count"] for p in state()) < messages * 0.98:
            if time.monotonic() > deadline or worker.poll() is not None:
                break
            time.sleep(0.2)
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)
        seen = state()
        done = sum(p["count"] for p in seen)
        seconds = max(p["last"] for p in seen) - min(p["first"] for p in seen) if seen else 0
        result = {
            "contender": f"kafkaworker --processes {count}",
            "processes": count,
            "processed": done,
            "msgs_per_s": done / seconds if seconds else 0.0,
        }
        shutil.rmtree(progress, ignore_errors=True)
        log(f"S3: {result['contender']}: {result['msgs_per_s']:,.0f} msg/s")
        results.append(result)
    if len(results) == 2 and results[0]["msgs_per_s"]:
        results[1]["speedup"] = results[1]["msgs_per_s"] / results[0]["msgs_per_s"]
    return results


def scenario_s6(
    bootstrap: str,
    log: Callable[[str], None],
    *,
    rate: int = 2000,
    before: float = 6.0,
    after: float = 8.0,
) -> list[dict[str, Any]]:
    """How long an existing member stops processing while another one joins."""
    results = []
    for protocol in ("classic", "consumer"):
        topic = new_topic(bootstrap, "s6")
        out = Path(tempfile.mkdtemp(prefix="bench-s6-"))
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "BENCH_TOPIC": topic,
            "BENCH_GROUP": f"bench-{uuid.uuid4().hex[:8]}",
            "BENCH_DIR": str(out),
            "KAFKAWORKER_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
            "KAFKAWORKER_KAFKA__GROUP_PROTOCOL": protocol,
            "KAFKAWORKER_LOG_LEVEL": "WARNING",
        }
        command = [
            sys.executable,
            "-m",
            "kafkaworker",
            "run",
            "benchmarks.contenders.rebalance_app:app",
        ]
        stop = threading.Event()
        feeder = threading.Thread(
            target=produce_at_rate,
            daemon=True,
            args=(bootstrap, topic, rate, int(rate * (before + after + 10)), stop),
        )
        feeder.start()
        first = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        time.sleep(before)  # the first member is alone and steady
        joined_at = time.time()
        second = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        time.sleep(after)
        for member in (second, first):
            member.send_signal(signal.SIGTERM)
            member.wait(60)
        stop.set()
        feeder.join()
        times = json.loads((out / f"{first.pid}.json").read_text())
        window = [t for t in times if joined_at - 1 <= t <= joined_at + after]
        gaps = [b - a for a, b in itertools.pairwise(window)]
        normal = [b - a for a, b in itertools.pairwise(t for t in times if t < joined_at - 1)]
        result = {
            "contender": f"kafkaworker ({protocol})",
            "protocol": protocol,
            "pause_s": max(gaps, default=float("nan")),
            "normal_gap_s": max(normal, default=float("nan")),
        }
        shutil.rmtree(out, ignore_errors=True)
        log(
            f"S6: {result['contender']}: longest stop of the existing member "
            f"{result['pause_s']:.3f}s (before the join: {result['normal_gap_s']:.3f}s)"
        )
        results.append(result)
    return results


def scenario_s4(
    bootstrap: str,
    contenders: list[Contender],
    rates: list[int],
    seconds: float,
    log: Callable[[str], None],
) -> list[dict[str, Any]]:
    results = []
    for rate in rates:
        for contender in contenders:
            topic = new_topic(bootstrap, f"s4-{rate}")
            count = int(rate * seconds)
            stop = threading.Event()
            group = f"bench-{uuid.uuid4().hex[:8]}"
            # Latency is measured in steady state: produce only once the contender's group is
            # Stable with its partitions assigned (start-up is not what S4 measures).
            producer = threading.Thread(
                target=_producer_when_stable,
                args=(bootstrap, topic, group, rate, count, stop),
                daemon=True,
            )
            producer.start()
            result = run_contender(
                contender,
                bootstrap,
                topic,
                count,
                timeout=seconds + 120,
                group=group,
                latency="1",
            )
            stop.set()
            producer.join()
            result["rate"] = rate
            log(f"S4 @{rate}/s: {contender.name}: {_latency(result)}")
            results.append(result)
    return results


def _producer_when_stable(  # noqa: PLR0917 - a Thread target, called positionally
    bootstrap: str, topic: str, group: str, rate: int, count: int, stop: threading.Event
) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    deadline = time.monotonic() + 60
    while not stop.is_set() and time.monotonic() < deadline:
        try:
            description = admin.describe_consumer_groups([group])[group].result(timeout=5)
            assigned = sum(
                len(m.assignment.topic_partitions)
                for m in description.members
                if m.assignment is not None
            )
            if str(description.state).endswith("STABLE") and assigned >= PARTITIONS:
                break
        except Exception:  # noqa: BLE001 - the group does not exist yet
            pass
        time.sleep(0.2)
    time.sleep(1)  # settle: the first fetch requests are under way
    produce_at_rate(bootstrap, topic, rate, count, stop)


def _short(result: dict[str, Any]) -> str:
    if "error" in result:
        return f"ERROR {result['error']}"
    return (
        f"{result['msgs_per_s']:,.0f} msg/s, {result['cpu_s_per_million']:.1f} CPU s/M, "
        f"RSS {result['rss_max_mb']:.0f} MB"
    )


def _latency(result: dict[str, Any]) -> str:
    if "error" in result:
        return f"ERROR {result['error']}"
    lat = result["latency_ms"]
    return f"p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms, max {lat['max']:.1f} ms"


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# kafkaworker benchmarks ({report['when']})",
        "",
        f"Broker: Apache Kafka {report['kafka']}, {report['machine']}.",
        "",
    ]
    s1 = report.get("s1")
    if s1:
        raw = next((r for r in s1 if r["contender"].startswith("raw") and "error" not in r), None)
        lines += [
            "## S1 throughput (JSON decode only, 8 partitions)",
            "",
            "| contender | msg/s | x raw | CPU s / 1M msgs | max RSS MB |",
            "|---|---:|---:|---:|---:|",
        ]
        for r in s1:
            if "error" in r:
                lines.append(f"| {r['contender']} | error: {r['error']} | | | |")
                continue
            ratio = r["msgs_per_s"] / raw["msgs_per_s"] if raw else float("nan")
            lines.append(
                f"| {r['contender']} | {r['msgs_per_s']:,.0f} | {ratio:.2f} | "
                f"{r['cpu_s_per_million']:.1f} | {r['rss_max_mb']:.0f} |"
            )
        lines.append("")
    s2 = report.get("s2")
    if s2:
        lines += [
            "## S2 IO-bound (2 ms handler, 8 partitions, 1000 keys)",
            "",
            "| run | msg/s | efficiency |",
            "|---|---:|---:|",
        ]
        for r in s2:
            eff = r.get("efficiency")
            lines.append(
                f"| {r['label']} | {r.get('msgs_per_s', 0):,.0f} | "
                f"{'' if eff is None else f'{eff:.2f}'} |"
            )
        lines.append("")
    s3 = report.get("s3")
    if s3:
        lines += [
            "## S3 CPU-bound (0.2 ms pure-Python handler)",
            "",
            "| run | msg/s | speedup |",
            "|---|---:|---:|",
        ]
        for r in s3:
            speedup = r.get("speedup")
            lines.append(
                f"| {r['contender']} | {r['msgs_per_s']:,.0f} | "
                f"{'' if speedup is None else f'{speedup:.2f}x'} |"
            )
        lines.append("")
    s6 = report.get("s6")
    if s6:
        lines += [
            "## S6 rebalance (longest stop of an existing member while one joins)",
            "",
            "| protocol | stop s | longest gap before the join s |",
            "|---|---:|---:|",
        ]
        for r in s6:
            lines.append(f"| {r['protocol']} | {r['pause_s']:.3f} | {r['normal_gap_s']:.3f} |")
        lines.append("")
    s4 = report.get("s4")
    if s4:
        lines += [
            "## S4 latency (produce -> handler start)",
            "",
            "| contender | rate | p50 ms | p99 ms | max ms |",
            "|---|---:|---:|---:|---:|",
        ]
        for r in s4:
            if "error" in r:
                lines.append(f"| {r['contender']} | {r['rate']} | error | | |")
                continue
            lat = r["latency_ms"]
            lines.append(
                f"| {r['contender']} | {r['rate']} | {lat['p50']:.1f} | "
                f"{lat['p99']:.1f} | {lat['max']:.1f} |"
            )
        lines.append("")
    return "\n".join(lines)


def chart(report: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib  # noqa: PLC0415 - optional: make bench installs it

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return False
    s1 = [r for r in report.get("s1", []) if "error" not in r]
    if not s1:
        return False
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.barh([r["contender"] for r in s1], [r["msgs_per_s"] for r in s1], color="#3b7dd8")
    ax.set_xlabel("messages / second (higher is better)")
    ax.set_title("S1: JSON decode, 8 partitions, one process")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="tiny datasets, no peers")
    parser.add_argument("--scenarios", default="s1,s2,s3,s4,s6")
    parser.add_argument("--peers", default="all", help="none, all, or a comma list")
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--bootstrap", default=os.environ.get("KAFKAWORKER_BENCH_BOOTSTRAP"))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    scenarios = set(args.scenarios.split(","))
    if args.smoke:
        args.messages, args.peers = min(args.messages, 20_000), "none"

    def log(line: str) -> None:
        print(line, flush=True)

    cluster = None
    if not args.bootstrap:
        cluster = Cluster(1, heap="1g")
        cluster.start()
        args.bootstrap = cluster.bootstrap
    try:
        python = sys.executable
        contenders = [
            Contender("raw confluent-kafka", "raw.py", python, {}),
            Contender("kafkaworker", "kafkaworker_app.py", python, {}),
        ]
        contenders += peer_envs.contenders(args.peers, log)
        report: dict[str, Any] = {
            "when": time.strftime("%Y-%m-%d %H:%M:%S"),
            "kafka": "4.4.0",
            "machine": f"{os.cpu_count()} cores",
            "messages": args.messages,
        }
        if "s1" in scenarios:
            report["s1"] = scenario_s1(args.bootstrap, contenders, args.messages, log)
        if "s2" in scenarios:
            s2_messages = 2_000 if args.smoke else 40_000
            report["s2"] = scenario_s2(args.bootstrap, contenders, s2_messages, log)
        if "s3" in scenarios:
            report["s3"] = scenario_s3(args.bootstrap, 2_000 if args.smoke else 40_000, log)
        if "s6" in scenarios:
            report["s6"] = scenario_s6(args.bootstrap, log)
        if "s4" in scenarios:
            rates, seconds = ([1000], 2.0) if args.smoke else ([1000, 10000], 10.0)
            report["s4"] = scenario_s4(args.bootstrap, contenders, rates, seconds, log)
    finally:
        if cluster is not None:
            cluster.cleanup()
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "smoke" if args.smoke else "latest"
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2))
    text = markdown(report)
    (args.out / f"{stem}.md").write_text(text)
    if not args.smoke and chart(report, args.out / f"{stem}.png"):
        log(f"chart: {args.out / f'{stem}.png'}")
    print("\n" + text)
    failed = [
        r
        for key in ("s1", "s2", "s4")
        for r in report.get(key, [])
        if "error" in r and not r["contender"].startswith(("faststream", "faust", "quix", "arroyo"))
    ]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

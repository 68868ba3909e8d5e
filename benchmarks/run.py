"""`make bench`: kafkaworker side by side with the raw client (and peers), same broker, one run.

    python -m benchmarks.run [--smoke] [--scenarios s1,s2,s3,s4,s6,s7,s8,s9]
                             [--peers none|all|a,b]
                             [--messages N] [--s2-messages N] [--s3-messages N]
                             [--repeats R] [--rates A,B] [--bootstrap HOST:PORT] [--out DIR]

Produces each dataset once, runs every contender in its own process with its own consumer
group, prints absolute figures and ratios (timings here are noisy: ratios from one run are
what counts), and saves JSON, a Markdown table and (with matplotlib) a PNG chart under
benchmarks/results/. `--smoke` is the tiny version `make test` runs so the suite cannot rot.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from benchmarks import peers as peer_envs
from benchmarks.loop_ceiling import completions_per_second
from kafkaworker.testing.broker import Cluster

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
    concurrency_option: str | None = None  # a peer's documented option, run at 8/32/128 in S2


def new_topic(bootstrap: str, prefix: str, partitions: int = PARTITIONS) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, partitions, 1)])[name].result(timeout=30)
    return name


def payload(i: int, ts: float | None = 0.0) -> bytes:
    # About 100 bytes of JSON. ts None: an S4 warm-up record (the meter leaves it out).
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


# The paced producers (S4, S6) batch for at most 1 ms. With linger.ms=0 librdkafka sends about
# one ProduceRequest per record: at 10k msg/s the broker (one JVM sharing 2 cores with the
# contender and the suite) fell behind, records waited 0.5-2 s in the producer's queue, and as
# the payload's time is taken at produce() that wait was counted as the contender's latency.
PACED_PRODUCER = {"linger.ms": 1}


def produce_at_rate(  # noqa: PLR0917 - also a Thread target, called positionally
    bootstrap: str,
    topic: str,
    rate: int,
    count: int,
    stop: threading.Event,
    producer: Producer | None = None,
) -> dict[str, Any]:
    """`count` records at `rate` per second, each with its produce time in the payload (and as
    the record's timestamp). Returns the rate achieved and how long the broker took to ack a
    record (`ack_ms`): a health figure of the feed, which must stay far below the latencies."""
    producer = producer or Producer({"bootstrap.servers": bootstrap, **PACED_PRODUCER})
    acks: list[float] = []

    def acked(err: Any, msg: Any) -> None:
        if err is None:
            acks.append(time.time() - msg.timestamp()[1] / 1000)

    interval = 1.0 / rate
    started = next_at = time.monotonic()
    sent = 0
    for i in range(count):
        if stop.is_set():
            break
        while True:
            ts = time.time()
            try:
                producer.produce(
                    topic,
                    payload(i, ts),
                    partition=i % PARTITIONS,
                    timestamp=int(ts * 1000),
                    on_delivery=acked,
                )
                break
            except BufferError:
                producer.poll(0.01)
        sent += 1
        producer.poll(0)
        next_at += interval
        delay = next_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    elapsed = time.monotonic() - started
    producer.flush(30)
    return {
        "produced": sent,
        "produced_per_s": sent / elapsed if elapsed else 0.0,
        "ack_ms": percentiles(acks),
    }


def percentiles(seconds: list[float]) -> dict[str, float]:
    """p50, p99 and max in milliseconds (the meter's definition)."""
    if not seconds:
        return {}
    ordered = sorted(seconds)
    return {
        "p50": ordered[len(ordered) // 2] * 1000,
        "p99": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
        "max": ordered[-1] * 1000,
    }


def run_contender(
    contender: Contender,
    bootstrap: str,
    topic: str,
    messages: int,
    timeout: float,
    *,
    group: str | None = None,
    extra_env: dict[str, str] | None = None,
    options: dict[str, str] | None = None,
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
    for key, value in {**contender.options, **(options or {})}.items():
        command += [f"--{key}", value]
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(extra_env or {})}
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


@contextlib.contextmanager
def jaeger_for(log: Callable[[str], None]) -> Iterator[str | None]:
    """A Jaeger for S1's traced rows (its OTLP endpoint), when tools/jaeger.py built one;
    None (the rows are left out) when not."""
    from tools.jaeger import binary  # noqa: PLC0415 - only S1 needs it

    found = binary()
    if found is None:
        log("S1: no Jaeger built (make jaeger-tools): the traced rows are left out")
        yield None
        return
    from kafkaworker.testing.jaeger import Jaeger  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="bench-jaeger-") as workdir:
        jaeger = Jaeger(found, Path(workdir)).start()
        try:
            yield jaeger.otlp_endpoint
        finally:
            jaeger.stop()


def traced(otlp: str | None) -> list[Contender]:
    """kafkaworker's S1 row with tracing on, exporting to a real Jaeger: every span sampled,
    and the parent-based 10% ratio (S1's records carry no traceparent: a root span each,
    one in ten sampled)."""
    if otlp is None:
        return []
    python = sys.executable
    return [
        Contender(
            f"kafkaworker traced, {label}",
            "kafkaworker_app.py",
            python,
            {"tracing": sampler, "otlp": otlp},
        )
        for label, sampler in (
            ("100%", "always_on"),
            ("parent-based 10%", "parentbased_traceidratio:0.1"),
        )
    ]


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


S2_CONCURRENCY = (8, 32, 128)
# Async def handlers: coroutines in flight, key ordering (1,000 keys).
S2_ASYNC_CONCURRENCY = (128, 512, 2048)
# Peers with a concurrency option (FastStream's and Faust's are async) run up to 512 too.
S2_PEER_CONCURRENCY = (8, 32, 128, 512)


def scenario_s2(
    bootstrap: str,
    contenders: list[Contender],
    messages: int,
    log: Callable[[str], None],
    *,
    async_messages: int | None = None,
) -> list[dict[str, Any]]:
    """IO-bound. kafkaworker runs each ordering at each concurrency; a peer with a documented
    concurrency option runs at each concurrency too, and its best run is marked "best" (the
    peer's figure); a contender without one runs once, one message at a time.

    The async rows read a backlog of their own, `async_messages` long: at 512 coroutines the
    shared one lasts 0.4 s, less than the worker's start and first rebalance, and the figure
    (62,678 msg/s at 512 in the run of 2026-11-29) was mostly those; on 250,000 records it is
    steady-state (~100k). They are also compared with a bare event loop running the same
    handler body at their concurrency on records in memory, measured in the same run
    (benchmarks/loop_ceiling.py): the nominal concurrency / 2 ms is above what one asyncio
    loop can do here (at 128 coroutines, with CPU to spare, asyncio.sleep(0.002) lasts 2.7 ms
    on average: the loop fires timers once per iteration; at 512 the loop is CPU-bound)."""
    topic = new_topic(bootstrap, "s2")
    produce_backlog(bootstrap, topic, messages, keys=1000)
    async_topic = topic
    if async_messages and async_messages != messages:
        async_topic = new_topic(bootstrap, "s2-async")
        produce_backlog(bootstrap, async_topic, async_messages, keys=1000)
    sleep_ms = 2.0
    results = []
    for contender in contenders:
        is_async = contender.options.get("async") == "1"
        count, read = (async_messages or messages, async_topic) if is_async else (messages, topic)
        if is_async:
            runs = [("key", c) for c in S2_ASYNC_CONCURRENCY]
        elif contender.script == "kafkaworker_app.py":
            runs = [(o, c) for o in ("partition", "key", "none") for c in S2_CONCURRENCY]
        elif contender.concurrency_option:
            # These options hand messages to N workers with no ordering: the "none" ceiling.
            runs = [("none", c) for c in S2_PEER_CONCURRENCY]
        else:
            runs = [("", 0)]
        own: list[dict[str, Any]] = []
        for ordering, concurrency in runs:
            options = {"sleep_ms": str(sleep_ms)}
            if concurrency:
                options["concurrency"] = str(concurrency)
            if contender.script == "kafkaworker_app.py":
                options["ordering"] = ordering
            result = run_contender(contender, bootstrap, read, count, timeout=900, options=options)
            if "error" not in result:
                ceiling = _s2_ceiling(ordering, concurrency, sleep_ms)
                result["efficiency"] = result["msgs_per_s"] / ceiling if ceiling else None
                if is_async:
                    loop = asyncio.run(completions_per_second(concurrency, count))
                    result["loop_ceiling"] = loop
                    result["loop_efficiency"] = result["msgs_per_s"] / loop
            result["setting"] = _s2_setting(contender, ordering, concurrency)
            result["label"] = f"{contender.name} {result['setting']}".strip()
            log(
                f"S2: {result['label']}: {_short(result)} "
                f"efficiency={result.get('efficiency') or 0:.2f}"
                + (
                    f" bare loop={result['loop_ceiling']:,.0f}/s "
                    f"(kafkaworker at {result['loop_efficiency']:.2f} of it)"
                    if "loop_ceiling" in result
                    else ""
                )
            )
            own.append(result)
        if contender.concurrency_option:
            ok = [r for r in own if "error" not in r]
            if ok:
                best = max(ok, key=lambda r: float(r["msgs_per_s"]))
                best["best"] = True
                log(f"S2: {contender.name} at its best: {best['setting']}")
        results += own
    return results


def _s2_setting(contender: Contender, ordering: str, concurrency: int) -> str:
    if contender.script == "kafkaworker_app.py":
        return f"{ordering}/{concurrency}"
    if contender.concurrency_option:
        return contender.concurrency_option.replace("=N)", f"={concurrency})")
    if contender.script == "raw.py":
        return ""
    return "(no concurrency option: one at a time)"


def _s2_ceiling(ordering: str, concurrency: int, sleep_ms: float) -> float:
    """What the ordering allows: one message at a time per partition, per key, or none."""
    if not ordering:
        return 0.0
    lanes = {"partition": PARTITIONS, "key": 1000, "none": concurrency}[ordering]
    return min(concurrency, lanes) / (sleep_ms / 1000)


def scenario_s3(
    bootstrap: str,
    messages: int,
    log: Callable[[str], None],
    *,
    broker: list[int],
    processes: tuple[int, ...] = (1, 2),
) -> list[dict[str, Any]]:
    """CPU-bound: one process against --processes N, through the real supervisor.

    Two figures per run. Wall: every message over the time from the first handled to the last,
    start-up, each member's join and the rebalances included. Steady: every 0.25 s the suite
    reads each process's count and the group's assignment; the window opens once the group is
    Stable with N members that each own partitions and every process is handling, and closes
    before the first process runs out of partitions (or at 95% of the dataset). "speedup" is
    the steady figures' ratio, "speedup_wall" the wall figures'. During the window the suite
    also reads the CPU time (utime + stime, /proc) of the broker JVM, of the workers and of the
    whole machine: on 2 cores the broker competes with two busy workers.
    """
    results = [_s3_once(bootstrap, messages, count, broker, log) for count in processes]
    if len(results) == 2:
        one, two = results
        if one["steady_msgs_per_s"] and two["steady_msgs_per_s"]:
            two["speedup"] = two["steady_msgs_per_s"] / one["steady_msgs_per_s"]
        if one["wall_msgs_per_s"]:
            two["speedup_wall"] = two["wall_msgs_per_s"] / one["wall_msgs_per_s"]
        log(
            f"S3: speedup of --processes 2: steady {two.get('speedup') or float('nan'):.2f}x, "
            f"wall {two.get('speedup_wall') or float('nan'):.2f}x"
        )
    return results


@dataclass
class _Sample:
    at: float  # time.monotonic()
    counts: dict[str, int]  # per worker process (pid): messages handled
    members: list[int] | None  # partitions per member while the group is Stable
    cpu: dict[str, float]  # CPU seconds: "broker", "machine" (all cores), and per worker pid


def _s3_once(
    bootstrap: str, messages: int, count: int, broker: list[int], log: Callable[[str], None]
) -> dict[str, Any]:
    topic = new_topic(bootstrap, "s3")
    produce_backlog(bootstrap, topic, messages)
    progress = Path(tempfile.mkdtemp(prefix="bench-s3-"))
    group = f"bench-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "BENCH_TOPIC": topic,
        "BENCH_GROUP": group,
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
    admin = AdminClient({"bootstrap.servers": bootstrap})
    samples: list[_Sample] = []
    deadline = time.monotonic() + 900
    try:
        while time.monotonic() < deadline and worker.poll() is None:
            samples.append(_s3_sample(progress, admin, group, broker))
            if sum(samples[-1].counts.values()) >= messages * 0.98:
                break
            time.sleep(0.25)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)
    seen = _s3_progress(progress)
    shutil.rmtree(progress, ignore_errors=True)
    done = sum(int(p["count"]) for p in seen.values())
    wall = (
        max(p["last"] for p in seen.values()) - min(p["first"] for p in seen.values())
        if seen
        else 0.0
    )
    result: dict[str, Any] = {
        "contender": f"kafkaworker --processes {count}",
        "processes": count,
        "messages": messages,
        "processed": done,
        "per_process": {pid: int(p["count"]) for pid, p in seen.items()},
        "wall_s": wall,
        "wall_msgs_per_s": done / wall if wall else 0.0,
        "steady_msgs_per_s": None,
    }
    if len(samples) > 1 and broker:
        first, last = samples[0], samples[-1]
        result["broker_cpu_s"] = last.cpu["broker"] - first.cpu["broker"]
        result["broker_cores_whole_run"] = result["broker_cpu_s"] / (last.at - first.at)
    window = _s3_window(samples, count, messages, {k: int(p["count"]) for k, p in seen.items()})
    if window is not None:
        a, b = samples[window[0]], samples[window[1]]
        seconds = b.at - a.at
        workers = [pid for pid in a.counts if pid in a.cpu and pid in b.cpu]
        result |= {
            "steady_msgs_per_s": (sum(b.counts.values()) - sum(a.counts.values())) / seconds,
            "steady_window_s": seconds,
            "steady_from_s": a.at - samples[0].at,
            "assignment": a.members,
            "cpu_cores": {
                "broker": (b.cpu["broker"] - a.cpu["broker"]) / seconds if broker else None,
                "workers": sum(b.cpu[p] - a.cpu[p] for p in workers) / seconds,
                "machine_busy": (b.cpu["machine"] - a.cpu["machine"]) / seconds,
                "machine": os.cpu_count(),
            },
        }
    result["msgs_per_s"] = result["steady_msgs_per_s"] or result["wall_msgs_per_s"]
    log(f"S3: {result['contender']}: {_s3_text(result)}")
    return result


def _s3_progress(progress: Path) -> dict[str, dict[str, float]]:
    found = {}
    for path in progress.glob("*.json"):
        with contextlib.suppress(ValueError, OSError):  # being replaced right now
            found[path.stem] = json.loads(path.read_text())
    return found


def _s3_sample(progress: Path, admin: AdminClient, group: str, broker: list[int]) -> _Sample:
    members = None
    with contextlib.suppress(Exception):  # the group does not exist yet
        description = admin.describe_consumer_groups([group])[group].result(timeout=2)
        if str(description.state).endswith("STABLE"):
            members = [
                len(m.assignment.topic_partitions) if m.assignment else 0
                for m in description.members
            ]
    counts = {pid: int(p["count"]) for pid, p in _s3_progress(progress).items()}
    cpu = {"broker": sum(cpu_seconds(pid) or 0.0 for pid in broker), "machine": machine_busy()}
    for pid in counts:
        seconds = cpu_seconds(int(pid))
        if seconds is not None:
            cpu[pid] = seconds
    return _Sample(time.monotonic(), counts, members, cpu)


def _s3_window(
    samples: list[_Sample], processes: int, messages: int, final: dict[str, int]
) -> tuple[int, int] | None:
    """Indexes of the first and last sample of the steady state, or None if there was none
    (a member never got partitions, or the dataset ran out first)."""
    start = None
    for i in range(1, len(samples)):
        now, before = samples[i], samples[i - 1]
        if (
            now.members is not None
            and len(now.members) == processes
            and all(now.members)
            and len(now.counts) == processes
            and all(n > before.counts.get(pid, 0) for pid, n in now.counts.items())
        ):
            start = i
            break
    if start is None:
        return None
    end = start
    for i in range(start + 1, len(samples)):
        counts = samples[i].counts
        # A process within 200 (its progress file's step) of its final count is out of work.
        if sum(counts.values()) >= messages * 0.95 or any(
            n >= final.get(pid, 0) - 200 for pid, n in counts.items()
        ):
            break
        end = i
    if samples[end].at - samples[start].at < 2.0:
        return None
    return start, end


def _s3_text(r: dict[str, Any]) -> str:
    text = f"wall {r['wall_msgs_per_s']:,.0f} msg/s ({r['processed']} in {r['wall_s']:.1f}s)"
    if r["steady_msgs_per_s"]:
        cores = r["cpu_cores"]
        broker = "n/a" if cores["broker"] is None else f"{cores['broker']:.2f}"
        text += (
            f", steady {r['steady_msgs_per_s']:,.0f} msg/s over {r['steady_window_s']:.1f}s "
            f"from {r['steady_from_s']:.1f}s (partitions per member {r['assignment']}); "
            f"CPU cores meanwhile: broker {broker}, workers {cores['workers']:.2f}, "
            f"machine busy {cores['machine_busy']:.2f} of {cores['machine']}"
        )
    else:
        text += ", no steady state (every member handling at once for 2 s or more)"
    return text


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of one process, from /proc/<pid>/stat."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy() -> float:
    """CPU seconds the whole machine spent busy (all cores), from /proc/stat."""
    try:
        fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return 0.0
    # user nice system idle iowait irq softirq steal (guest time is inside user already)
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def broker_pids(bootstrap: str, cluster: Cluster | None) -> list[int]:
    """The broker JVMs' pids: the suite's own cluster, else local `kafka.Kafka` processes whose
    server.properties listen on a port of `bootstrap` (empty for a broker elsewhere)."""
    if cluster is not None:
        return [n.process.pid for n in cluster.nodes if n.process is not None]
    ports = {f":{entry.rsplit(':', 1)[-1]}" for entry in bootstrap.split(",")}
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = [
                a.decode(errors="replace") for a in (proc / "cmdline").read_bytes().split(b"\0")
            ]
            if "kafka.Kafka" not in argv:
                continue
            config = Path(argv[argv.index("kafka.Kafka") + 1]).read_text()
        except (OSError, IndexError):
            continue
        listeners = [line for line in config.splitlines() if line.startswith("listeners=")]
        if any(port in line for line in listeners for port in ports):
            found.append(int(proc.name))
    return found


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
    *,
    repeats: int = 3,
) -> list[dict[str, Any]]:
    """Latency (produce time in the payload -> handler start) at fixed rates, in steady state.

    Each run has its own topic and group. Once the contender runs, the suite produces warm-up
    records (one per partition, no produce time) until two rounds in a row were each handled
    within a second of being produced: the contender fetches every partition and handles what
    arrives. Only then does the paced stream start; warm-ups are in no figure. Each contender
    runs `repeats` times per rate (the repeats interleaved across contenders); its figures are
    the medians of the repeats' p50, p99 and max, and each repeat's are kept under "repeats".
    """
    results = []
    for rate in rates:
        runs: dict[str, list[dict[str, Any]]] = {c.name: [] for c in contenders}
        for repeat in range(repeats):
            for contender in contenders:
                result = _s4_once(bootstrap, contender, rate, seconds)
                log(
                    f"S4 @{rate}/s: {contender.name} (repeat {repeat + 1}/{repeats}): "
                    f"{_latency(result)}{_feed_text(result)}"
                )
                runs[contender.name].append(result)
        for contender in contenders:
            summary = _s4_summary(contender.name, rate, runs[contender.name])
            log(f"S4 @{rate}/s: {contender.name}: median of {repeats}: {_latency(summary)}")
            results.append(summary)
    return results


def _s4_once(bootstrap: str, contender: Contender, rate: int, seconds: float) -> dict[str, Any]:
    topic = new_topic(bootstrap, f"s4-{rate}")
    count = int(rate * seconds)
    progress = Path(tempfile.mkstemp(prefix="bench-s4-", suffix=".progress")[1])
    stop = threading.Event()
    feed: dict[str, Any] = {}
    producer = threading.Thread(
        target=_feed_when_warm,
        args=(bootstrap, topic, rate, count, progress, stop, feed),
        daemon=True,
    )
    producer.start()
    try:
        result = run_contender(
            contender,
            bootstrap,
            topic,
            count,
            timeout=seconds + 150,
            extra_env={"BENCH_PROGRESS": str(progress)},
            options={"latency": "1"},
        )
    finally:
        stop.set()
        producer.join()
        for path in (progress, progress.with_name(progress.name + ".tmp")):
            path.unlink(missing_ok=True)
    result["rate"] = rate
    result["feed"] = feed
    if "error" in feed:
        result["error"] = f"{feed['error']}; {result.get('error', '')}".rstrip("; ")
    return result


def _feed_when_warm(  # noqa: PLR0917 - a Thread target, called positionally
    bootstrap: str,
    topic: str,
    rate: int,
    count: int,
    progress: Path,
    stop: threading.Event,
    feed: dict[str, Any],
) -> None:
    """Warm the contender up, then produce the measured stream with the same (warm) producer."""
    producer = Producer({"bootstrap.servers": bootstrap, **PACED_PRODUCER})
    started = time.monotonic()
    warmups = _warm_up(producer, topic, progress, stop)
    feed["warmups"] = warmups
    feed["warm_up_s"] = time.monotonic() - started
    if warmups is None:
        if not stop.is_set():
            feed["error"] = "no warm-up record handled in time"
        return
    feed |= produce_at_rate(bootstrap, topic, rate, count, stop, producer)


def _warm_up(
    producer: Producer, topic: str, progress: Path, stop: threading.Event, timeout: float = 120
) -> int | None:
    """Produce rounds of warm-up records (one per partition) until two rounds in a row were
    each handled within a second; the number produced, or None (timeout, or stopped)."""
    produced = live = 0
    deadline = time.monotonic() + timeout
    while not stop.is_set() and time.monotonic() < deadline:
        for partition in range(PARTITIONS):
            producer.produce(topic, payload(-1, None), partition=partition)
        producer.flush(10)
        produced += PARTITIONS
        round_deadline = time.monotonic() + 1.0
        while _handled(progress) < produced and time.monotonic() < round_deadline:
            time.sleep(0.01)
        live = live + 1 if _handled(progress) >= produced else 0
        if live == 2:
            return produced
    return None


def _handled(progress: Path) -> int:
    """The warm-up records the contender has handled (its meter writes the number)."""
    try:
        return int(progress.read_text() or 0)
    except (OSError, ValueError):
        return 0


def _s4_summary(name: str, rate: int, runs: list[dict[str, Any]]) -> dict[str, Any]:
    kept = ("latency_ms", "processed", "warmups", "feed", "error")
    summary: dict[str, Any] = {
        "contender": name,
        "rate": rate,
        "repeats": [{k: r[k] for k in kept if k in r} for r in runs],
    }
    ok = [r for r in runs if "error" not in r and "latency_ms" in r]
    if not ok:
        summary["error"] = next((r["error"] for r in runs if "error" in r), "no latencies")
        return summary
    summary["latency_ms"] = {
        k: statistics.median(r["latency_ms"][k] for r in ok) for k in ("p50", "p99", "max")
    }
    summary["repeats_ok"] = len(ok)
    acks = [r["feed"]["ack_ms"]["p99"] for r in ok if r["feed"].get("ack_ms")]
    summary["feed_ack_p99_ms"] = statistics.median(acks) if acks else None
    return summary


def _feed_text(result: dict[str, Any]) -> str:
    feed = result.get("feed", {})
    if not feed.get("ack_ms"):
        return ""
    return (
        f" [feed: {feed['produced_per_s']:,.0f}/s, broker ack p50 {feed['ack_ms']['p50']:.1f} "
        f"p99 {feed['ack_ms']['p99']:.1f} ms, {feed['warmups']} warm-ups in "
        f"{feed['warm_up_s']:.1f}s]"
    )


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


def _traced_ratios(s1: list[dict[str, Any]]) -> list[str]:
    """The traced rows against kafkaworker with tracing off, in one line."""
    off = next((r for r in s1 if r["contender"] == "kafkaworker" and "error" not in r), None)
    rows = [r for r in s1 if r["contender"].startswith("kafkaworker traced") and "error" not in r]
    if off is None or not rows:
        return []
    ratios = ", ".join(
        f"{r['contender'].removeprefix('kafkaworker traced, ')} "
        f"{r['msgs_per_s'] / off['msgs_per_s']:.2f}x"
        for r in rows
    )
    return [
        "Tracing on (spans exported to a real Jaeger over OTLP/HTTP), against kafkaworker with "
        f"it off: {ratios} (docs/tracing.md, Cost).",
        "",
    ]


def scenario_s9(bootstrap: str, log: Callable[[str], None], *, smoke: bool) -> dict[str, Any]:
    """The outbox relay (benchmarks/outbox_relay.py) against a throwaway PostgreSQL: records/s
    draining 100,000 rows committed at once, and commit -> ack p50/p99 of single-row
    transactions at 500/s for 10 s (smoke: 2,000 rows, 2 s). 90 s in all here (a broker and
    PostgreSQL started, 100,000 rows inserted, 10 s paced; one run, load 7 on 2 cores)."""
    from benchmarks.outbox_relay import measure  # noqa: PLC0415 - the postgres extra
    from kafkaworker.testing.postgres import PostgresError, PostgresServer  # noqa: PLC0415

    try:
        server = PostgresServer().start()
    except PostgresError as exc:
        log(f"S9: no PostgreSQL here ({exc}; make postgres-tools): the relay row is left out")
        return {"error": str(exc)}
    try:
        rows, seconds = (2_000, 2.0) if smoke else (100_000, 10.0)
        result = measure(bootstrap, server.url, rows=rows, batch=2000, rate=500.0, seconds=seconds)
    finally:
        server.cleanup()
    log(f"S9: relay: {_s9_text(result)}")
    # The inbox's cost, broker-less (benchmarks/inbox_cost.py, a server of its own).
    from benchmarks.inbox_cost import run as inbox_cost  # noqa: PLC0415 - the postgres extra

    result["inbox"] = inbox = inbox_cost(2_000 if smoke else 20_000, 16)
    log(
        f"S9: inbox {inbox['inbox_msg_s']:,} msg/s, {inbox['ratio']}x a bare autocommit insert "
        f"({inbox['own_connection_msg_s']:,}), {inbox['ratio_to_own_transaction']}x a "
        f"transaction per call ({inbox['own_transaction_msg_s']:,}); batch inbox "
        f"{inbox['inbox_batch_msg_s']:,} msg/s ({inbox['batch_ratio']}x)"
    )
    return result


def _s9_text(r: dict[str, Any]) -> str:
    return (
        f"{r['records_per_s']:,.0f} records/s over {r['rows']:,} rows; commit -> ack at "
        f"{r['rate']:g} rows/s p50 {r['commit_to_ack_p50_ms']:.1f} ms, "
        f"p99 {r['commit_to_ack_p99_ms']:.1f} ms"
    )


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# kafkaworker benchmarks ({report['when']})",
        "",
        f"Broker: Apache Kafka {report['kafka']} ({report.get('broker', 'one for all')}), "
        f"{report['machine']}, on the same machine as the contenders.",
        "",
    ]
    s1 = report.get("s1")
    if s1:
        raw = next((r for r in s1 if r["contender"].startswith("raw") and "error" not in r), None)
        lines += [
            "## S1 throughput (JSON decode only, 8 partitions)",
            "",
            "x raw: against the raw loop with the fetch tuning kafkaworker ships",
            "(fetch.queue.backoff.ms=10); the row with librdkafka's defaults shows what that",
            "default (1000 ms) caps a backlog drain at. Peers run with their own defaults.",
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
        lines += _traced_ratios(s1)
    s2 = report.get("s2")
    if s2:
        lines += [
            "## S2 IO-bound (2 ms handler, 8 partitions, 1000 keys)",
            "",
            "Peers run at 8, 32, 128 and 512 with their documented concurrency option (which",
            "gives up ordering, as kafkaworker's `none`; FastStream's and Faust's handlers are",
            "async and await the 2 ms); **best** marks each peer's figure. Quix Streams has no",
            "such option. `kafkaworker async`: an async def handler awaiting asyncio.sleep, key",
            "order, 128/512/2048 coroutines in flight, on a backlog of its own (250,000",
            "records). Efficiency: msg/s over what the ordering and concurrency allow. Bare",
            "loop: the same handler body (decode the JSON, await 2 ms) on records in memory,",
            "run by a bare asyncio loop at the same concurrency in this run, no Kafka and no",
            "framework (benchmarks/loop_ceiling.py); of the loop: kafkaworker over that.",
            "",
            "| run | msg/s | efficiency | bare loop | of the loop |",
            "|---|---:|---:|---:|---:|",
        ]
        for r in s2:
            eff = r.get("efficiency")
            best = " **best**" if r.get("best") else ""
            figure = f"error: {r['error']}" if "error" in r else f"{r['msgs_per_s']:,.0f}"
            loop = r.get("loop_ceiling")
            of_loop = "" if loop is None else f"{loop:,.0f} | {r['loop_efficiency']:.2f}"
            lines.append(
                f"| {r['label']}{best} | {figure} | {'' if eff is None else f'{eff:.2f}'} "
                f"| {of_loop or ' | '} |"
            )
        lines.append("")
    s3 = report.get("s3")
    if s3:
        lines += [
            f"## S3 CPU-bound (0.2 ms pure-Python handler, {s3[0]['messages']:,} messages)",
            "",
            "Steady: while every member owns partitions and handles (the join and rebalance,",
            "and the tail, left out); wall: first to last message. CPU in cores (1.00 = one",
            "core busy) during the steady window.",
            "",
            "| run | steady msg/s | speedup | wall msg/s | speedup | window s | partitions "
            "| broker CPU | workers CPU | machine busy |",
            "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|",
        ]
        for r in s3:
            cores = r.get("cpu_cores") or {}

            def num(value: float | None, fmt: str = ",.0f", suffix: str = "") -> str:
                return "" if value is None else f"{value:{fmt}}{suffix}"

            lines.append(
                f"| {r['contender']} | {num(r['steady_msgs_per_s'])} "
                f"| {num(r.get('speedup'), '.2f', 'x')} | {num(r['wall_msgs_per_s'])} "
                f"| {num(r.get('speedup_wall'), '.2f', 'x')} "
                f"| {num(r.get('steady_window_s'), '.1f')} | {r.get('assignment') or ''} "
                f"| {num(cores.get('broker'), '.2f')} | {num(cores.get('workers'), '.2f')} "
                f"| {num(cores.get('machine_busy'), '.2f')} |"
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
            "After a warm-up (the contender handles records on every partition), medians over",
            "the repeats of each repeat's p50, p99 and max. Feed ack p99: how long the broker",
            "took to acknowledge the paced producer's records (the feed's own health).",
            "",
            "| contender | rate | p50 ms | p99 ms | max ms | repeats | feed ack p99 ms |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in s4:
            if "error" in r:
                lines.append(f"| {r['contender']} | {r['rate']} | error | | | | |")
                continue
            lat = r["latency_ms"]
            ack = r.get("feed_ack_p99_ms")
            lines.append(
                f"| {r['contender']} | {r['rate']} | {lat['p50']:.1f} | "
                f"{lat['p99']:.1f} | {lat['max']:.1f} | {r['repeats_ok']}/{len(r['repeats'])} "
                f"| {'' if ack is None else f'{ack:.1f}'} |"
            )
        lines.append("")
    s9 = report.get("s9")
    if s9:
        lines += [
            "## S9 outbox relay (PostgreSQL -> Kafka, 8 partitions, 1000 keys)",
            "",
            "records/s: rows committed at once, drained by the relay (acks=all, marked",
            "published). Commit -> ack: single-row transactions at a steady rate, each row's",
            "mark minus its transaction's start (an upper bound). Issue 27: >= 20,000/s.",
            "",
            "| relay | records/s | rows | rate | p50 ms | p99 ms |",
            "|---|---:|---:|---:|---:|---:|",
            f"| error: {s9['error']} | | | | | |"
            if "error" in s9
            else f"| batch {s9['batch']} | {s9['records_per_s']:,.0f} | {s9['rows']:,} | "
            f"{s9['rate']:g}/s | {s9['commit_to_ack_p50_ms']:.1f} | "
            f"{s9['commit_to_ack_p99_ms']:.1f} |",
            "",
        ]
    inbox = (s9 or {}).get("inbox")
    if inbox:
        lines += [
            "## S9 inbox (broker-less: the in-memory source, 8 partitions, 1000 keys, "
            "concurrency 16, one ledger row a message)",
            "",
            "The same insert through a pool of the handler's own, at least once: autocommit",
            "(one statement) and a transaction per call (psycopg's default: BEGIN, insert,",
            "COMMIT). The batch inbox: partition order, batches of up to 100, one executemany.",
            "Issue 27: the inbox >= 0.8x its own-connection baseline.",
            "",
            "| handler | msg/s | inbox / it |",
            "|---|---:|---:|",
            f"| inbox, one message a call | {inbox['inbox_msg_s']:,} | |",
            f"| own connection, autocommit | {inbox['own_connection_msg_s']:,} | "
            f"{inbox['ratio']} |",
            f"| own connection, a transaction per call | {inbox['own_transaction_msg_s']:,} | "
            f"{inbox['ratio_to_own_transaction']} |",
            f"| batch inbox (vs autocommit) | {inbox['inbox_batch_msg_s']:,} | "
            f"{inbox['batch_ratio']} |",
            "",
        ]
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


@contextlib.contextmanager
def broker_for(external: str | None) -> Iterator[tuple[str, Cluster | None]]:
    """A fresh broker for each scenario, unless one was given (--bootstrap): the previous
    scenario's after-effects (a 1M-record topic, dozens of groups, a well-used JVM heap) made
    the broker itself stall for 150-300 ms during a later S4, as its own ack latency showed."""
    if external:
        yield external, None
        return
    with Cluster(1, heap="1g") as cluster:
        yield cluster.bootstrap, cluster


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="tiny datasets, no peers")
    parser.add_argument("--scenarios", default="s1,s2,s3,s4,s6,s7,s8,s9")
    parser.add_argument("--peers", default="all", help="none, all, or a comma list")
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--s2-messages", type=int, default=40_000, help="S2's (smoke: 2000)")
    parser.add_argument(
        "--s2-async-messages", type=int, default=250_000, help="S2 async rows' (smoke: 2000)"
    )
    parser.add_argument(
        "--s3-messages", type=int, default=160_000, help="S3's dataset (smoke: 2000)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="S4 runs per contender and rate")
    parser.add_argument("--rates", default="1000,10000", help="S4's rates in msg/s (smoke: 1000)")
    parser.add_argument("--bootstrap", default=os.environ.get("KAFKAWORKER_BENCH_BOOTSTRAP"))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    scenarios = set(args.scenarios.split(","))
    if args.smoke:
        args.messages, args.peers = min(args.messages, 20_000), "none"
        args.s2_messages, args.s2_async_messages, args.s3_messages = (
            min(args.s2_messages, 2_000),
            min(args.s2_async_messages, 2_000),
            min(args.s3_messages, 2_000),
        )
        args.repeats = 1

    def log(line: str) -> None:
        print(line, flush=True)

    python = sys.executable
    contenders = [
        # The ceiling gets the fetch tuning kafkaworker ships (fetch.queue.backoff.ms=10); S1
        # also runs it with librdkafka's defaults, which cap a backlog drain near 150k/s here.
        Contender("raw confluent-kafka", "raw.py", python, {"fetch-queue-backoff-ms": "10"}),
        Contender("kafkaworker", "kafkaworker_app.py", python, {}),
        # The same with an async def handler on the event loop.
        Contender("kafkaworker async", "kafkaworker_app.py", python, {"async": "1"}),
    ]
    contenders += peer_envs.contenders(args.peers, log)
    report: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "kafka": "4.4.0",
        "machine": f"{os.cpu_count()} cores",
        "messages": args.messages,
        "broker": "external" if args.bootstrap else "a fresh one per scenario",
    }
    if "s1" in scenarios:
        with broker_for(args.bootstrap) as (bootstrap, _), jaeger_for(log) as otlp:
            untuned = Contender("raw confluent-kafka, librdkafka defaults", "raw.py", python, {})
            report["s1"] = scenario_s1(
                bootstrap,
                [contenders[0], untuned, *contenders[1:3], *traced(otlp), *contenders[3:]],
                args.messages,
                log,
            )
    if "s2" in scenarios:
        with broker_for(args.bootstrap) as (bootstrap, _):
            report["s2"] = scenario_s2(
                bootstrap, contenders, args.s2_messages, log, async_messages=args.s2_async_messages
            )
    if "s3" in scenarios:
        with broker_for(args.bootstrap) as (bootstrap, cluster):
            broker = broker_pids(bootstrap, cluster)
            if not broker:
                log("S3: the broker's process was not found here; its CPU is not reported")
            report["s3"] = scenario_s3(bootstrap, args.s3_messages, log, broker=broker)
    if "s6" in scenarios:
        with broker_for(args.bootstrap) as (bootstrap, _):
            report["s6"] = scenario_s6(bootstrap, log)
    if "s7" in scenarios:
        # Queue mode vs stream mode (benchmarks/queue_mode.py: its own report,
        # benchmarks/results/queue_mode.{json,md}).
        with broker_for(args.bootstrap) as (bootstrap, _):
            smoke = ["--messages", "1000", "--skip-decode", "--out", str(args.out)]
            subprocess.run(
                [sys.executable, "-m", "benchmarks.queue_mode", "--bootstrap", bootstrap]
                + (smoke if args.smoke else []),
                check=True,
            )
    if "s8" in scenarios:  # exactly_once vs at_least_once: results/exactly_once.md
        small = ["--messages", "1000", "--repeats", "1", "--seconds", "1"]
        quix = args.peers == "all" or "quixstreams" in args.peers.split(",")
        with broker_for(args.bootstrap) as (bootstrap, _):
            command = [sys.executable, "-m", "benchmarks.exactly_once", "--bootstrap", bootstrap]
            command += ["--out", str(args.out), "--peers", "quixstreams" if quix else "none"]
            subprocess.run(command + (small if args.smoke else []), check=True)
    if "s4" in scenarios:
        rates = [int(r) for r in args.rates.split(",")]
        rates, seconds = (rates[:1], 2.0) if args.smoke else (rates, 10.0)
        with broker_for(args.bootstrap) as (bootstrap, _):
            report["s4"] = scenario_s4(
                bootstrap, contenders, rates, seconds, log, repeats=args.repeats
            )
    if "s9" in scenarios:
        with broker_for(args.bootstrap) as (bootstrap, _):
            report["s9"] = scenario_s9(bootstrap, log, smoke=args.smoke)
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

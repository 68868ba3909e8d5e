"""`make run`: the example worker and a load generator, with a local broker if none answers.

The children run in their own process groups: Ctrl+C reaches only this process, which stops
each child exactly once (SIGTERM), so no child is interrupted again while it commits and closes.

Everything it starts (broker, load generator, worker) it also stops, on Ctrl+C or SIGTERM.

The worker logs to build/demo/worker.log; this process prints a summary every few seconds
(rate, lag, handled, dead-lettered), read from the worker's own /metrics endpoint.
KAFKAWORKER_KAFKA__BOOTSTRAP_SERVERS points it (and the worker) at another cluster.

The demo's group and topics are its own (apps/orders/demo.yaml), not the getting started's,
and it refuses to start while its group has members (another `make run`, say): two demos in
one group would split the partitions and each report half of the work.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml
from confluent_kafka.admin import AdminClient, NewTopic
from prometheus_client.parser import text_string_to_metric_families

from kafkaworker import load_settings
from kafkaworker.errors import KafkaWorkerError
from kafkaworker.ops import KafkaAdmin, active_members
from kafkaworker.testing.broker import Cluster
from kafkaworker.testing.jvm import free_port, port_answers

LOCAL = "127.0.0.1:9092"
BOOTSTRAP = os.environ.get("KAFKAWORKER_KAFKA__BOOTSTRAP_SERVERS", LOCAL)
APP = "apps.orders.app:app"
SETTINGS = "apps/orders/demo.yaml"  # the demo's own group and topics
_NAMES = yaml.safe_load((Path(__file__).resolve().parent.parent / SETTINGS).read_text())[
    "handlers"
]["accept_order"]
GROUP: str = _NAMES["group"]
[TOPIC] = _NAMES["topics"]
OUTPUT: str = _NAMES["output"]  # the example's output
DLQ: str = _NAMES["dlq"]  # created by the worker at start-up
RATE = 20
SUMMARY_EVERY = 5.0  # seconds
LOG = Path("build/demo/worker.log")
LOADGEN = [
    sys.executable,
    "-m",
    "apps.orders.loadgen",
    "--bootstrap",
    BOOTSTRAP,
    "--topic",
    TOPIC,
    "--rate",
    str(RATE),
]


def ensure_topic(bootstrap: str, topic: str, partitions: int = 4) -> None:
    # Warnings and errors only: librdkafka's info lines (a client purging its queue as it is
    # freed) would only clutter the demo's output.
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 4})
    if topic not in admin.list_topics(timeout=10).topics:
        future = admin.create_topics([NewTopic(topic, partitions, 1)])[topic]
        with contextlib.suppress(Exception):  # created meanwhile by someone else: fine
            future.result(timeout=30)


@dataclass(frozen=True)
class Figures:
    """What the worker's /metrics says at one moment."""

    at: float
    finished: float  # handled, dead-lettered or skipped
    dead_lettered: float
    lag: float  # records not finished yet, over all partitions
    lag_seconds: float  # age of the oldest of them


def scrape(url: str) -> Figures | None:
    """The worker's figures; None while its endpoint does not answer (still starting)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return None
    sums = {"messages_finished": 0.0, "dead_lettered": 0.0, "consumer_lag": 0.0}
    oldest = 0.0
    for family in text_string_to_metric_families(text):
        name = family.name.removeprefix("kafkaworker_")
        for sample in family.samples:
            if name == "consumer_lag_seconds":
                oldest = max(oldest, sample.value)
            elif name in sums and not sample.name.endswith("_created"):
                sums[name] += sample.value
    return Figures(
        time.monotonic(),
        sums["messages_finished"],
        sums["dead_lettered"],
        sums["consumer_lag"],
        oldest,
    )


def summary(before: Figures, now: Figures) -> str:
    rate = (now.finished - before.finished) / max(now.at - before.at, 1e-9)
    handled = now.finished - now.dead_lettered
    return (
        f"{time.strftime('%H:%M:%S')}  {rate:5.1f} msg/s  "
        f"lag {now.lag:.0f} ({now.lag_seconds:.1f} s)  "
        f"handled {handled:.0f}  dead-lettered {now.dead_lettered:.0f}"
    )


def cli() -> str:
    """How to call `kafkaworker` from here: the one beside this Python, as typed in a shell."""
    path = Path(sys.executable).with_name("kafkaworker")
    on_path = shutil.which("kafkaworker")
    if on_path is not None and Path(on_path).resolve() == path.resolve():
        return "kafkaworker"
    with contextlib.suppress(ValueError):
        return str(path.relative_to(Path.cwd()))
    return str(path)


def where_to_look(metrics_url: str, *, started_broker: bool) -> str:
    kw = cli()
    if BOOTSTRAP != LOCAL:
        kw = f"KAFKAWORKER_KAFKA__BOOTSTRAP_SERVERS={BOOTSTRAP} {kw}"
    hints = [
        (f"{kw} routes {APP} --settings {SETTINGS}", "handler, topics"),
        (f"{kw} lag {APP} --settings {SETTINGS}", "lag per partition"),
        (f"curl -s {metrics_url}", "also /healthz, /readyz"),
        (f"{kw} dlq inspect {DLQ}", "rejected orders, why"),
        (f"tail -f {LOG}", "the worker's log"),
    ]
    width = max(len(command) for command, _ in hints)
    return "\n".join(
        [
            f"orders flowing: {RATE}/s to {TOPIC}, handled by {APP}.",
            "Where to look next, in another terminal:",
            *(f"  {command.ljust(width)}  # {note}" for command, note in hints),
            f"A summary every {SUMMARY_EVERY:g} s; Ctrl+C stops the worker and the load "
            + ("generator, and the broker it started." if started_broker else "generator."),
        ]
    )


def already_running(bootstrap: str) -> str | None:
    """Why the demo must not start: its group has members (another demo, or a worker run
    with its settings); None when it is free. An unreachable cluster is told as one line."""
    settings = load_settings(SETTINGS, kafka={"bootstrap_servers": bootstrap}, log_level="ERROR")
    with KafkaAdmin(settings) as admin:
        members = admin.group(GROUP, time_lag=False).members
    if not members:
        return None
    return f"{active_members(GROUP, members)} (another `make run`?), then try again"


def log_tail(lines: int = 20) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(LOG.read_text(errors="replace").splitlines()[-lines:])
    return ""


def stop(children: list[subprocess.Popen[bytes]], cluster: Cluster | None) -> None:
    """SIGTERM every child (each drains and commits), wait up to 30 s, then the broker."""
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for child in children:
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
    if cluster is not None:
        cluster.cleanup()


def main() -> int:
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if inherited as ignored
    cluster: Cluster | None = None
    children: list[subprocess.Popen[bytes]] = []
    try:
        if BOOTSTRAP == LOCAL and not port_answers(9092):
            print(f"no Kafka on {LOCAL}: starting one (stopped again on Ctrl+C)", flush=True)
            cluster = Cluster(1, port=9092)
            cluster.start()
        refused = already_running(BOOTSTRAP)
        if refused is not None:
            print(f"not starting: {refused}", flush=True)
            return 1
        print(f"creating the topics {TOPIC} and {OUTPUT} on {BOOTSTRAP} if missing", flush=True)
        ensure_topic(BOOTSTRAP, TOPIC)
        ensure_topic(BOOTSTRAP, OUTPUT)
        metrics_port = 9400 if not port_answers(9400) else free_port()
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        LOG.parent.mkdir(parents=True, exist_ok=True)
        print(f"starting the worker ({APP}) and the load generator", flush=True)
        with LOG.open("wb") as log:
            worker = [sys.executable, "-m", "kafkaworker", "run", APP, "--settings", SETTINGS]
            worker += ["--metrics-port", str(metrics_port)]
            children.append(
                subprocess.Popen(worker, stdout=log, stderr=subprocess.STDOUT, process_group=0)
            )
        children.append(subprocess.Popen(LOADGEN, process_group=0))
        before: Figures | None = None
        started = next_at = time.monotonic()
        warned = False
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
            if before is None:  # until the worker's endpoint first answers
                before = scrape(metrics_url)
                next_at = time.monotonic() + SUMMARY_EVERY
                if before is not None:
                    print(
                        where_to_look(metrics_url, started_broker=cluster is not None), flush=True
                    )
                elif not warned and time.monotonic() - started > 20:
                    print(f"the worker is slow to start: see {LOG}", flush=True)
                    warned = True
            elif time.monotonic() >= next_at:
                next_at += SUMMARY_EVERY
                now = scrape(metrics_url)
                if now is not None:
                    print(summary(before, now), flush=True)
                    before = now
        if children[0].poll() is not None:
            print(f"the worker exited ({children[0].returncode}); the end of {LOG}:")
            print(log_tail(), flush=True)
        return 1
    except KafkaWorkerError as exc:
        print(f"Error: {exc}", flush=True)
        return 1
    except KeyboardInterrupt:
        if children:
            print("stopping: the worker finishes what it has in flight, then commits", flush=True)
        return 0
    finally:
        stop(children, cluster)


if __name__ == "__main__":
    sys.exit(main())

"""`make run`: the example worker and a load generator, with a local broker if none answers.

The children run in their own process groups: Ctrl+C reaches only this process, which stops
each child exactly once (SIGTERM), so no child is interrupted again while it commits and closes.

Everything it starts (broker, load generator, worker) it also stops, on Ctrl+C or SIGTERM.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time

from confluent_kafka.admin import AdminClient, NewTopic

from kafkaworker.testing.broker import Cluster, port_answers

BOOTSTRAP = "127.0.0.1:9092"
TOPIC = "orders"
WORKER = [sys.executable, "-m", "kafkaworker", "run", "apps.orders.app:app"]
LOADGEN = [
    sys.executable,
    "-m",
    "apps.orders.loadgen",
    "--bootstrap",
    BOOTSTRAP,
    "--topic",
    TOPIC,
    "--rate",
    "20",
]


def ensure_topic(bootstrap: str, topic: str, partitions: int = 4) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    if topic not in admin.list_topics(timeout=10).topics:
        future = admin.create_topics([NewTopic(topic, partitions, 1)])[topic]
        with contextlib.suppress(Exception):  # created meanwhile by someone else: fine
            future.result(timeout=30)


def main() -> int:
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if inherited as ignored
    cluster: Cluster | None = None
    children: list[subprocess.Popen[bytes]] = []
    try:
        if not port_answers(9092):
            print("no Kafka on 127.0.0.1:9092: starting one (stopped again on Ctrl+C)", flush=True)
            cluster = Cluster(1, port=9092)
            cluster.start()
        ensure_topic(BOOTSTRAP, TOPIC)
        ensure_topic(BOOTSTRAP, "orders.accepted")  # the example's output
        children.append(subprocess.Popen(WORKER, process_group=0))
        children.append(subprocess.Popen(LOADGEN, process_group=0))
        print(
            "orders flowing; Ctrl+C stops the worker, the load generator and the broker", flush=True
        )
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
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


if __name__ == "__main__":
    sys.exit(main())

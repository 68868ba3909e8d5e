"""`make run-bridge`: the gRPC bridge and the worker that consumes its events, with a local
broker if none answers on 127.0.0.1:9092 (like `make run`).

Starts, each in its own process group so that Ctrl+C reaches only this process, which then
stops each child once with SIGTERM: the worker (`kafkaworker run apps.bridge.worker:app`)
and the bridge (`python -m apps.bridge`, on 127.0.0.1:50051 or a free port). Once the bridge
says SERVING it places one order itself and shows the answer, then says how to place more.
Logs: build/bridge-demo/{bridge,worker}.log.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc

from apps.bridge.standard import check_health
from kafkaworker.testing.broker import Cluster
from kafkaworker.testing.jvm import free_port, port_answers
from tools.demo import BOOTSTRAP, LOCAL, ensure_topic, stop

APP = "apps.bridge.worker:app"
TOPIC = "orders.placed"
OUTPUT = "orders.confirmed"
LOGS = Path("build/bridge-demo")
# As typed in a shell from the checkout: .venv/bin/python, not a bare python off PATH.
CLIENT = f"{os.path.relpath(sys.executable)} -m apps.bridge.client"


def wait_serving(address: str, bridge: subprocess.Popen[bytes], timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        while time.monotonic() < deadline and bridge.poll() is None:
            try:
                if check_health(channel, timeout=2) == "SERVING":
                    return True
            except grpc.RpcError:
                pass  # not listening yet
            time.sleep(0.5)
    return False


def main() -> int:
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    cluster: Cluster | None = None
    children: list[subprocess.Popen[bytes]] = []
    try:
        if BOOTSTRAP == LOCAL and not port_answers(9092):
            print(f"no Kafka on {LOCAL}: starting one (stopped again on Ctrl+C)", flush=True)
            cluster = Cluster(1, port=9092)
            cluster.start()
        print(f"creating the topics {TOPIC} and {OUTPUT} on {BOOTSTRAP} if missing", flush=True)
        ensure_topic(BOOTSTRAP, TOPIC)
        ensure_topic(BOOTSTRAP, OUTPUT)
        port = 50051 if not port_answers(50051) else free_port()
        address = f"127.0.0.1:{port}"
        LOGS.mkdir(parents=True, exist_ok=True)
        print(f"starting the worker ({APP}) and the bridge on {address}", flush=True)
        commands = {
            "worker": [sys.executable, "-m", "kafkaworker", "run", APP],
            "bridge": [sys.executable, "-m", "apps.bridge", "--port", str(port)],
        }
        for name, command in commands.items():
            with (LOGS / f"{name}.log").open("wb") as log:
                children.append(
                    subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, process_group=0)
                )
        if not wait_serving(address, children[1]):
            print(f"the bridge did not become SERVING: see {LOGS / 'bridge.log'}", flush=True)
            return 1
        client = f"{CLIENT} --address {address}"
        example = "place-order --order-id o-1 --customer customer-1 --line A:2:150 --line B:1:99"
        print(f"$ {client} {example}", flush=True)
        subprocess.run(
            [sys.executable, "-m", "apps.bridge.client", "--address", address, *example.split()],
            check=False,
        )
        print(
            "\n".join(
                [
                    f"the worker confirms it to {OUTPUT}: see {LOGS / 'worker.log'}",
                    "More, from another terminal:",
                    f"  {client} {example.replace('o-1', 'o-2')}",
                    f"  {client} publish {OUTPUT} --key k --value '{{\"any\": 1}}'",
                    f"  {client} health",
                    f"  grpcurl -plaintext {address} list      # reflection",
                    "Ctrl+C stops the bridge (in-flight RPCs finish), the worker and the broker.",
                ]
            ),
            flush=True,
        )
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
        print("a child exited: see build/bridge-demo/*.log", flush=True)
        return 1
    except KeyboardInterrupt:
        print("stopping", flush=True)
        return 0
    finally:
        stop(children, cluster)


if __name__ == "__main__":
    sys.exit(main())

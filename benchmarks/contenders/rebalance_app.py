"""S6: records when each message was handled; writes the times on shutdown.

Configured by BENCH_TOPIC, BENCH_GROUP and BENCH_DIR (the output: <pid>.json, a sorted list of
handling times), so the suite can measure how long this member stopped during a rebalance.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from kafkaworker import App, Message

app = App("bench-rebalance")
_times: list[float] = []


@app.handler(
    os.environ.get("BENCH_TOPIC", "bench"), group=os.environ.get("BENCH_GROUP"), codec="raw"
)
def handle(msg: Message[Any]) -> None:
    _times.append(time.time())  # list.append is atomic under the GIL


@app.on_shutdown
def dump() -> None:
    path = os.path.join(os.environ.get("BENCH_DIR", "/tmp"), f"{os.getpid()}.json")
    with open(path, "w") as out:
        json.dump(sorted(_times), out)

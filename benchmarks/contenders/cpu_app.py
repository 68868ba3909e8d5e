"""S3: a CPU-bound handler (about BENCH_BURN_US microseconds of pure Python per message), run
with `kafkaworker run benchmarks.contenders.cpu_app:app [--processes N]`.

Each process writes its progress (count, first and last handled time) to BENCH_DIR/<pid>.json
every 200 messages, from which the suite computes the throughput of all processes together.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

from kafkaworker import App, Message

app = App("bench-cpu")
_burn = float(os.environ.get("BENCH_BURN_US", "200")) / 1e6
_path = os.path.join(os.environ.get("BENCH_DIR", "/tmp"), f"{os.getpid()}.json")
_lock = threading.Lock()
_state = {"count": 0, "first": 0.0, "last": 0.0}


def _spin(seconds: float) -> int:
    end = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < end:
        n += 1
    return n


@app.handler(
    os.environ.get("BENCH_TOPIC", "bench"),
    group=os.environ.get("BENCH_GROUP"),
    concurrency=1,
    codec="raw",
)
def handle(msg: Message[Any]) -> None:
    _spin(_burn)
    now = time.time()
    with _lock:
        if _state["count"] == 0:
            _state["first"] = now
        _state["count"] += 1
        _state["last"] = now
        if _state["count"] % 200 == 0:
            with open(_path + ".tmp", "w") as out:
                json.dump(_state, out)
            os.replace(_path + ".tmp", _path)

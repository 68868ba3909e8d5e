"""Shared by every contender (stdlib only: it runs in each peer's own virtualenv).

Counts handled messages; records wall time and process CPU time at the first and the last one,
and the latency of each message (produce time in the payload -> handler start) when asked.

In latency mode a message whose payload has no produce time (`"ts": null`) is a warm-up record
of the suite's: it is not counted towards the target nor in the latencies; the number handled so
far is written to the file named by BENCH_PROGRESS, from which the suite learns that this
contender fetches and handles records before it starts the measured stream.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import threading
import time
from typing import Any


class Meter:
    def __init__(self, target: int, *, latency: bool = False) -> None:
        self.target = target
        self.count = 0
        self.first = self.last = 0.0
        self.cpu_first = self.cpu_last = 0.0
        self.latencies: list[float] = []
        self._latency = latency
        # Lock-free counting: next() on itertools.count is atomic under the GIL, and each
        # tick goes to exactly one thread. A lock per message made the meter itself a cost
        # for contenders that handle messages on many threads (8% of kafkaworker's S1
        # profile), which the single-threaded raw loop never paid.
        self._ticks = itertools.count(1)
        self._lock = threading.Lock()
        self.done = threading.Event()
        self.warmups = 0
        self._progress = os.environ.get("BENCH_PROGRESS")

    def hit(self, n: int = 1, produced_at: float | None = None) -> None:
        now = time.time()
        if self._latency and produced_at is None:
            self._warmup(n)
            return
        if self._latency and produced_at is not None:
            self.latencies.append(now - produced_at)  # list.append is atomic
        for _ in range(n):
            tick = next(self._ticks)
            if tick == 1:
                self.first, self.cpu_first = now, time.process_time()
            if tick == self.target:
                self.last, self.cpu_last = time.time(), time.process_time()
                self.count = tick
                self.done.set()
            elif tick > self.target:
                self.count = max(self.count, tick)

    def _warmup(self, n: int) -> None:
        with self._lock:
            self.warmups += n
            if self._progress:
                with open(self._progress + ".tmp", "w") as out:
                    out.write(str(self.warmups))
                os.replace(self._progress + ".tmp", self._progress)

    def write(self, path: str, contender: str, **extra: Any) -> None:
        seconds = max(self.last - self.first, 1e-9)
        result = {
            "contender": contender,
            "processed": self.count,
            "seconds": seconds,
            "msgs_per_s": self.target / seconds,
            "cpu_s_per_million": (self.cpu_last - self.cpu_first) / self.target * 1e6,
            "rss_max_mb": peak_rss_mb(),
            "warmups": self.warmups,
            **extra,
        }
        if self.latencies:
            ordered = sorted(self.latencies)
            result["latency_ms"] = {
                "p50": ordered[len(ordered) // 2] * 1000,
                "p99": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
                "max": ordered[-1] * 1000,
            }
        with open(path, "w") as out:
            json.dump(result, out)


def peak_rss_mb() -> float:
    """This process's peak RSS. Not getrusage's ru_maxrss: Linux keeps that across execve, so
    a contender would report its parent's peak (the suite's, after producing the dataset)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def args() -> dict[str, str]:
    """--key value pairs from the command line."""
    argv = sys.argv[1:]
    return {argv[i].lstrip("-").replace("-", "_"): argv[i + 1] for i in range(0, len(argv), 2)}

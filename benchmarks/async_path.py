"""S2's async row without a broker: the in-memory source, the real poll thread and the async
executor, a handler that decodes its value and awaits 2 ms, key order over 1,000 keys. For
trying a change to the async path in seconds, with the broker's own costs and noise left out;
it prints msg/s, each busy thread's CPU per message, and the bare loop's figure for the same
handler body (benchmarks/loop_ceiling.py) measured right after.

    python -m benchmarks.async_path [--messages N] [--concurrency N]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import threading
import time
from typing import Any

import orjson
import structlog

from benchmarks.loop_ceiling import completions_per_second
from kafkaworker import App, Message, Settings
from kafkaworker.runtime.compose import AppRuntime, GivenSources
from kafkaworker.runtime.runner import tuned_gc
from kafkaworker.runtime.source import Partition
from kafkaworker.runtime.source.memory import MemorySource

PARTITIONS = 8
KEYS = 1000


def _thread_cpu() -> dict[int, float]:
    """CPU seconds of each of this process's threads, by native id (Linux)."""
    tick = os.sysconf("SC_CLK_TCK")
    seconds = {}
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        seconds[int(tid)] = (int(fields[11]) + int(fields[12])) / tick
    return seconds


def committed(source: MemorySource, partitions: list[Partition]) -> bool:
    return all(source.committed.get(p) == source.log_size(p) for p in partitions)


def run(messages: int, concurrency: int) -> dict[str, Any]:
    app = App("async-path")

    @app.handler("t", name="h", concurrency=concurrency, ordering="key")
    async def handle(msg: Message[Any]) -> None:
        msg.value  # noqa: B018 - decoded, as S2's handler does
        await asyncio.sleep(0.002)

    source = MemorySource({"t": PARTITIONS})
    for i in range(messages):
        key = i % KEYS
        value = orjson.dumps({"id": i, "ts": 0.0, "customer": f"c-{key}", "pad": "x" * 40})
        source.broker.append("t", value, key=b"%d" % key, partition=key % PARTITIONS)
    settings = Settings.model_validate({"log_level": "WARNING"})
    return drain(app, source, settings, messages)


def drain(app: App, source: MemorySource, settings: Settings, messages: int) -> dict[str, Any]:
    """Run the app's handler "h" over `source` until all of topic "t" is committed: msg/s and
    each busy thread's CPU per message."""
    partitions = [Partition("t", p) for p in range(PARTITIONS)]
    runtime = AppRuntime(
        app, settings, [app.handlers["h"]], sources=GivenSources({"h": source})
    ).__enter__()
    [handler] = runtime.handlers
    with tuned_gc(True):
        before = _thread_cpu()
        started = time.perf_counter()
        handler.start()
        # Polled, not awaited with source.wait_for(): that wakes on every commit and takes
        # the GIL from the threads measured.
        deadline = started + 300
        while not (done := committed(source, partitions)) and time.perf_counter() < deadline:
            time.sleep(0.005)
        elapsed = time.perf_counter() - started
        after = _thread_cpu()
        names = {t.native_id: t.name for t in threading.enumerate()}
        runtime.__exit__(None, None, None)
    if not done:
        raise SystemExit("not everything was committed within 300 s")
    threads = {
        names.get(tid, str(tid)): round((cpu - before.get(tid, 0.0)) / messages * 1e6, 2)
        for tid, cpu in after.items()
        if cpu - before.get(tid, 0.0) > 0.01
    }
    return {"msgs_per_s": messages / elapsed, "cpu_us_per_message": threads}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--concurrency", type=int, default=512)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    result = run(args.messages, args.concurrency)
    bare = asyncio.run(completions_per_second(args.concurrency, args.messages))
    print(
        f"kafkaworker {result['msgs_per_s']:,.0f} msg/s, bare loop {bare:,.0f} msg/s "
        f"({result['msgs_per_s'] / bare:.2f} of it); CPU us per message by thread: "
        f"{result['cpu_us_per_message']}"
    )


if __name__ == "__main__":
    main()

"""Faust (faust-streaming): an agent over a JSON topic, run as a worker.

`--concurrency N` is the agent's documented `concurrency=N`: N instances of the agent share the
topic's stream (the default is 1).
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

from _meter import Meter, args

a = args()
sys.argv = [sys.argv[0], "worker", "--loglevel", "warn", "--without-web"]
import faust  # noqa: E402

sleep = float(a.get("sleep_ms", "0")) / 1000
concurrency = int(a.get("concurrency", "1"))
meter = Meter(int(a["messages"]), latency=a.get("latency") == "1")
app = faust.App(
    a["group"],
    broker=f"kafka://{a['bootstrap']}",
    value_serializer="json",
    topic_allow_declare=False,
    topic_disable_leader=True,
    consumer_auto_offset_reset="earliest",
    web_enabled=False,
)
topic = app.topic(a["topic"], value_type=None, value_serializer="json")


@app.agent(topic, concurrency=concurrency)
async def handle(stream: Any) -> None:
    async for value in stream:
        if sleep:
            await asyncio.sleep(sleep)
        meter.hit(1, value.get("ts") if isinstance(value, dict) else None)
        if meter.done.is_set():
            meter.write(a["out"], "faust", concurrency=concurrency)
            os._exit(0)  # Faust's own shutdown takes seconds; the figures are written


if __name__ == "__main__":
    app.main()

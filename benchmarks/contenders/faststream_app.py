"""FastStream with its confluent-kafka backend: a subscriber that gets the decoded JSON body.

Settings: the documented defaults for a subscriber (auto commit), auto_offset_reset=earliest.
`--concurrency N` is the subscriber's documented `max_workers=N` (concurrent handling, which
FastStream allows with its default ack policy, ACK_FIRST); 1 is the default subscriber.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from _meter import Meter, args
from faststream.confluent import KafkaBroker


async def run() -> None:
    a = args()
    sleep = float(a.get("sleep_ms", "0")) / 1000
    concurrency = int(a.get("concurrency", "1"))
    meter = Meter(int(a["messages"]), latency=a.get("latency") == "1")
    broker = KafkaBroker(a["bootstrap"], logger=None)

    @broker.subscriber(
        a["topic"],
        group_id=a["group"],
        auto_offset_reset="earliest",
        max_workers=concurrency,
    )
    async def handle(body: dict[str, Any]) -> None:
        if sleep:
            await asyncio.sleep(sleep)
        meter.hit(1, body.get("ts"))

    await broker.start()
    while not meter.done.is_set():
        await asyncio.sleep(0.05)
    meter.write(a["out"], "faststream", concurrency=concurrency)
    await broker.stop()


if __name__ == "__main__":
    asyncio.run(run())
    time.sleep(0)

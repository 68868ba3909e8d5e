"""The Python ceiling: a raw confluent-kafka loop. Batch consume, decode, store offsets.

A batch is `poll(t)` (returns as soon as one record is there) then `consume(n - 1, 0)` (what is
already fetched, without waiting): `consume(n, t)` alone waits up to `t` for a full batch, which
made this loop's latency at 1k msg/s its own timeout (p50 27 ms) rather than the client's.
Batches of 1000 (--batch N): 4000, kafkaworker's default, made this loop no faster.
"""

from __future__ import annotations

import time

import orjson
from _meter import Meter, args
from confluent_kafka import Consumer, TopicPartition


def main() -> None:
    a = args()
    sleep = float(a.get("sleep_ms", "0")) / 1000
    meter = Meter(int(a["messages"]), latency=a.get("latency") == "1")
    consumer = Consumer(
        {
            "bootstrap.servers": a["bootstrap"],
            "group.id": a["group"],
            "auto.offset.reset": "earliest",
            "enable.auto.offset.store": False,
            # --fetch-queue-backoff-ms 10: the fetch tuning kafkaworker ships (the ceiling
            # must not be capped by a default the framework does not keep).
            **(
                {"fetch.queue.backoff.ms": int(a["fetch_queue_backoff_ms"])}
                if "fetch_queue_backoff_ms" in a
                else {}
            ),
        }
    )
    consumer.subscribe([a["topic"]])
    batch_size = int(a.get("batch", "1000"))
    while not meter.done.is_set():
        first = consumer.poll(0.05)
        batch = [first, *consumer.consume(batch_size - 1, 0)] if first is not None else []
        positions: dict[int, int] = {}
        for msg in batch:
            if msg.error() is not None:
                continue
            value = orjson.loads(msg.value())
            if sleep:
                time.sleep(sleep)
            meter.hit(1, value.get("ts"))
            positions[msg.partition()] = msg.offset() + 1
        if positions:
            consumer.store_offsets(
                offsets=[TopicPartition(a["topic"], p, o) for p, o in positions.items()]
            )
    meter.write(a["out"], "raw confluent-kafka")
    consumer.close()


if __name__ == "__main__":
    main()

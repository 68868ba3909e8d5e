"""Sentry's Arroyo with RunTaskInThreads (its strategy for IO-bound work), then CommitOffsets.

`--concurrency N` is RunTaskInThreads' `concurrency` (it has no default; 8 unless given, as
kafkaworker's default handler concurrency).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import orjson
from _meter import Meter, args
from arroyo.backends.kafka.configuration import build_kafka_consumer_configuration
from arroyo.backends.kafka.consumer import KafkaConsumer, KafkaPayload
from arroyo.processing.processor import StreamProcessor
from arroyo.processing.strategies import CommitOffsets, RunTaskInThreads
from arroyo.processing.strategies.abstract import (
    ProcessingStrategy,
    ProcessingStrategyFactory,
)
from arroyo.types import Commit, Message, Partition, Topic


def main() -> None:
    a = args()
    sleep = float(a.get("sleep_ms", "0")) / 1000
    concurrency = int(a.get("concurrency", "8"))
    meter = Meter(int(a["messages"]), latency=a.get("latency") == "1")

    def handle(message: Message[KafkaPayload]) -> None:
        value: Any = orjson.loads(message.payload.value)
        if sleep:
            time.sleep(sleep)
        meter.hit(1, value.get("ts"))

    class Factory(ProcessingStrategyFactory[KafkaPayload]):
        def create_with_partitions(
            self, commit: Commit, partitions: Mapping[Partition, int]
        ) -> ProcessingStrategy[KafkaPayload]:
            return RunTaskInThreads(
                handle,
                concurrency=concurrency,
                max_pending_futures=1000,
                next_step=CommitOffsets(commit),
            )

    consumer = KafkaConsumer(
        build_kafka_consumer_configuration(
            default_config={},
            bootstrap_servers=[a["bootstrap"]],
            auto_offset_reset="earliest",
            group_id=a["group"],
        )
    )
    processor = StreamProcessor(consumer, Topic(a["topic"]), Factory())
    import threading  # noqa: PLC0415

    def stop_when_done() -> None:
        meter.done.wait()
        processor.signal_shutdown()

    threading.Thread(target=stop_when_done, daemon=True).start()
    processor.run()
    meter.write(a["out"], "arroyo", concurrency=concurrency)


if __name__ == "__main__":
    main()

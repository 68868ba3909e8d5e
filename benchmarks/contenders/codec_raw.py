"""The raw confluent-kafka loop of raw.py, decoding each value with a format's deserializer
(--format json|avro|json_schema|protobuf; --registry URL): the ceiling of the codec rows."""

from __future__ import annotations

import orjson
from _formats import codec_for
from _meter import Meter, args
from confluent_kafka import Consumer, TopicPartition


def main() -> None:
    a = args()
    meter = Meter(int(a["messages"]))
    codec = codec_for(a["format"], a.get("registry", ""))
    # The codec's own deserializer call, without kafkaworker's error mapping around it.
    decode = orjson.loads if codec is None else codec._decode
    consumer = Consumer(
        {
            "bootstrap.servers": a["bootstrap"],
            "group.id": a["group"],
            "auto.offset.reset": "earliest",
            "enable.auto.offset.store": False,
            # The fetch tuning kafkaworker ships, as S1's ceiling row.
            "fetch.queue.backoff.ms": 10,
        }
    )
    consumer.subscribe([a["topic"]])
    while not meter.done.is_set():
        first = consumer.poll(0.05)
        batch = [first, *consumer.consume(999, 0)] if first is not None else []
        positions: dict[int, int] = {}
        for msg in batch:
            if msg.error() is not None:
                continue
            decode(msg.value())
            meter.hit(1)
            positions[msg.partition()] = msg.offset() + 1
        if positions:
            consumer.store_offsets(
                offsets=[TopicPartition(a["topic"], p, o) for p, o in positions.items()]
            )
    meter.write(a["out"], f"raw confluent-kafka {a['format']}")
    consumer.close()


if __name__ == "__main__":
    main()

"""Stand-in for the example worker until the kafkaworker runtime lands: a plain consumer loop."""

from __future__ import annotations

import signal
import sys

import orjson
from confluent_kafka import Consumer


def main() -> int:
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    consumer = Consumer(
        {
            "bootstrap.servers": "127.0.0.1:9092",
            "group.id": "orders-service",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe(["orders"])
    try:
        while True:
            for msg in consumer.consume(100, timeout=1.0):
                if msg.error() is None:
                    order = orjson.loads(msg.value() or b"null")
                    print(
                        f"order {order['id']} from {order['customer']}: {order['amount']} "
                        f"(partition {msg.partition()}, offset {msg.offset()})",
                        flush=True,
                    )
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

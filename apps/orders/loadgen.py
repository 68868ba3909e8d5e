"""A small load generator for the example: JSON orders, keyed by customer, at a steady rate."""

from __future__ import annotations

import argparse
import itertools
import random
import signal
import sys
import time

import orjson
from confluent_kafka import Producer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--topic", default="orders")
    parser.add_argument("--rate", type=float, default=20.0, help="messages per second")
    parser.add_argument("--count", type=int, default=0, help="stop after N messages (0: never)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    producer = Producer({"bootstrap.servers": args.bootstrap, "linger.ms": 5})
    interval = 1.0 / args.rate
    counter = itertools.count(1) if args.count == 0 else iter(range(1, args.count + 1))
    next_at = time.monotonic()
    sent = 0
    try:
        for order_id in counter:
            customer = f"customer-{random.randrange(50)}"
            order = {
                "id": order_id,
                "customer": customer,
                "amount": round(random.uniform(1, 500), 2),
            }
            producer.produce(args.topic, orjson.dumps(order), key=customer.encode())
            producer.poll(0)
            sent += 1
            next_at += interval
            time.sleep(max(0.0, next_at - time.monotonic()))
    except KeyboardInterrupt:
        pass
    finally:
        producer.flush(10)
        print(f"loadgen: produced {sent} orders to {args.topic}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""How fast the bridge answers: `python -m apps.bridge.bench [--address A] [--rpcs N]
[--concurrency C]` places N orders, C at a time, over one channel, and prints the rate and the
latency percentiles of the answers (each one acknowledged by the broker, acks=all).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Sequence

import grpc

from apps.bridge.proto import bridge_pb2 as pb
from apps.bridge.proto import bridge_pb2_grpc


async def run(address: str, rpcs: int, concurrency: int) -> str:
    latencies: list[float] = []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = bridge_pb2_grpc.OrderBridgeStub(channel)
        queue = iter(range(rpcs))

        async def place_orders() -> None:
            for i in queue:  # shared: each order is placed by one of the tasks
                request = pb.PlaceOrderRequest(
                    order_id=f"bench-{i}",
                    customer_id=f"customer-{i % 100}",
                    currency="EUR",
                    lines=[pb.OrderLine(sku="A", quantity=1, unit_price_cents=100)],
                )
                started = time.perf_counter()
                await stub.PlaceOrder(request, timeout=30)
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(place_orders() for _ in range(concurrency)))
        took = time.perf_counter() - started
    cuts = statistics.quantiles(latencies, n=100)
    return (
        f"{rpcs} PlaceOrder RPCs, {concurrency} at a time: {rpcs / took:,.0f}/s; "
        f"latency p50 {cuts[49] * 1000:.1f} ms, p99 {cuts[98] * 1000:.1f} ms"
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m apps.bridge.bench")
    parser.add_argument("--address", default="127.0.0.1:50051")
    parser.add_argument("--rpcs", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=1)
    args = parser.parse_args(argv)
    print(asyncio.run(run(args.address, args.rpcs, args.concurrency)))


if __name__ == "__main__":
    main()

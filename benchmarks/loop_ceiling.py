"""The asyncio ceiling behind S2's async rows: a bare event loop whose N coroutines do nothing
but `await asyncio.sleep(0.002)`, no Kafka, no kafkaworker. S2's nominal ceiling
(concurrency / 2 ms: 256,000 msg/s at 512) is above what one Python loop can do on a small
machine; this is the figure to compare kafkaworker's async rows with.

    python -m benchmarks.loop_ceiling [--messages N]
"""

from __future__ import annotations

import argparse
import asyncio
import time


async def completions_per_second(concurrency: int, messages: int) -> float:
    done = 0

    async def coroutine() -> None:
        nonlocal done
        while done < messages:
            await asyncio.sleep(0.002)
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(coroutine() for _ in range(concurrency)))
    return done / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=300_000)
    args = parser.parse_args()
    for concurrency in (128, 512, 2048):
        rate = asyncio.run(completions_per_second(concurrency, args.messages))
        ceiling = concurrency / 0.002
        share = rate / ceiling
        print(
            f"{concurrency:>5} coroutines: {rate:>9,.0f} sleeps/s ({share:.2f} of {ceiling:,.0f})"
        )


if __name__ == "__main__":
    main()

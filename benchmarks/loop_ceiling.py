"""The asyncio ceiling behind S2's async rows: a bare event loop whose N coroutines run S2's
handler body on records already in memory (decode ~100 bytes of JSON with orjson, then
`await asyncio.sleep(0.002)`), no Kafka, no kafkaworker. S2's nominal ceiling (concurrency /
2 ms: 256,000 msg/s at 512) is above what one Python loop can do on a small machine; this is
the figure to compare kafkaworker's async rows with. `--sleep-only` leaves the decode out.

    python -m benchmarks.loop_ceiling [--messages N] [--sleep-only]
"""

from __future__ import annotations

import argparse
import asyncio
import time

import orjson

# The shape of benchmarks.run.payload(): what S2's handlers decode.
_PAYLOADS = [
    orjson.dumps({"id": i, "ts": 0.0, "customer": f"c-{i % 1000}", "pad": "x" * 40})
    for i in range(1000)
]


async def completions_per_second(concurrency: int, messages: int, *, decode: bool = True) -> float:
    done = 0
    loads = orjson.loads

    async def coroutine() -> None:
        nonlocal done
        while done < messages:
            if decode:
                loads(_PAYLOADS[done % 1000])
            await asyncio.sleep(0.002)
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(coroutine() for _ in range(concurrency)))
    return done / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=300_000)
    parser.add_argument("--sleep-only", action="store_true", help="no decode: asyncio alone")
    args = parser.parse_args()
    for concurrency in (128, 512, 2048):
        rate = asyncio.run(
            completions_per_second(concurrency, args.messages, decode=not args.sleep_only)
        )
        ceiling = concurrency / 0.002
        share = rate / ceiling
        print(f"{concurrency:>5} coroutines: {rate:>9,.0f} msg/s ({share:.2f} of {ceiling:,.0f})")


if __name__ == "__main__":
    main()

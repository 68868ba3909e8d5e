"""What exactly_once costs an output handler: S1-like throughput at_least_once vs exactly_once.

    python -m benchmarks.exactly_once [--bootstrap HOST:PORT] [--messages N] [--repeats R]
                                      [--concurrency C]

A backlog of S1's JSON records (8 partitions, keys i % 100) is copied by a handler with an
output (decode, one output per input, ordering="key", concurrency 8 or `--concurrency`),
alternating the two guarantees, `--repeats` runs each, one process, one broker. Two rates per
run, from the first handler call: to the last handler call ("handled"), and to the group's
committed offsets reaching the log end ("committed": for exactly_once, the outputs are visible
to read_committed readers then; for at_least_once, every output was acknowledged before its
offset committed). Both guarantees commit every 100 ms (commit_interval 0.1 for at_least_once,
the default transaction_interval for exactly_once), so the second rate compares like with like.

Results: benchmarks/results/exactly_once.md (exactly_once-c<C>.md with --concurrency).
Without --bootstrap, a broker is started.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import threading
import time
import uuid
from typing import Any

import orjson
from confluent_kafka import Consumer, Producer, TopicPartition

from benchmarks.fleet_cost import RESULTS, broker, run, topics
from kafkaworker import App, Message, Settings

PARTITIONS = 8
GUARANTEES = ("at_least_once", "exactly_once")


def backlog(bootstrap: str, messages: int) -> str:
    [topic] = topics(bootstrap, 1, PARTITIONS)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    for i in range(messages):
        value = orjson.dumps({"id": i, "name": "x" * 40})
        while True:
            try:
                producer.produce(topic, value, key=str(i % 100))
                break
            except BufferError:  # librdkafka's queue is full: let it send
                producer.poll(0.1)
    producer.flush(60)
    return topic


def committed_to_the_end(bootstrap: str, group: str, topic: str, ends: dict[int, int]) -> bool:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        tps = consumer.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], 10)
    finally:
        consumer.close()
    return all(tp.offset == ends[tp.partition] for tp in tps)


def once(
    bootstrap: str, topic: str, messages: int, guarantee: str, concurrency: int
) -> tuple[float, float]:
    """One run: (handled msg/s, committed msg/s)."""
    [output] = topics(bootstrap, 1, PARTITIONS)
    group = f"eos-bench-{uuid.uuid4().hex[:8]}"
    app = App(f"eos-bench-{guarantee}")
    counter = itertools.count(1)  # next() is atomic: the worker threads share it
    started, handled = [0.0], [0.0]
    done = threading.Event()

    @app.handler(
        topic,
        group=group,
        output=output,
        ordering="key",
        concurrency=concurrency,
        processing_guarantee=guarantee,  # type: ignore[arg-type]
    )
    def copy(msg: Message[Any]) -> dict[str, Any]:
        seen = next(counter)
        if seen == 1:
            started[0] = time.perf_counter()
        elif seen >= messages:
            handled[0] = time.perf_counter()
        return {"id": msg.value["id"]}

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "ends"})
    ends = {
        p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
        for p in range(PARTITIONS)
    }
    consumer.close()
    finished = [0.0]

    def watch() -> None:
        while not committed_to_the_end(bootstrap, group, topic, ends):
            time.sleep(0.02)
        finished[0] = time.perf_counter()
        done.set()

    threading.Thread(target=watch, daemon=True).start()
    config = Settings.model_validate(
        {
            "kafka": {"bootstrap_servers": bootstrap},
            "log_level": "WARNING",
            "commit_interval": 0.1,
        }
    )
    run(app, config, done)
    return (
        round(messages / (handled[0] - started[0])),
        round(messages / (finished[0] - started[0])),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bootstrap")
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=8)
    a = parser.parse_args()
    rates: dict[str, list[tuple[float, float]]] = {g: [] for g in GUARANTEES}
    with broker(a.bootstrap, None) as (bootstrap, _):
        topic = backlog(bootstrap, a.messages)
        for _ in range(a.repeats):
            for guarantee in GUARANTEES:
                rates[guarantee].append(
                    once(bootstrap, topic, a.messages, guarantee, a.concurrency)
                )
                print(guarantee, rates[guarantee][-1], flush=True)

    def median(guarantee: str, which: int) -> float:
        return statistics.median(r[which] for r in rates[guarantee])

    lines = [
        "# exactly_once vs at_least_once (benchmarks/exactly_once.py)",
        "",
        "S1-like output handler (decode, one output per input, ordering key, concurrency "
        f"{a.concurrency}), "
        f"{a.messages:,} records on {PARTITIONS} partitions, alternating, {a.repeats} runs "
        "each; msg/s from the first handler call to the last call (handled) and to the "
        "group's offsets committed to the log end (committed).",
        "",
        "| guarantee | handled msg/s | committed msg/s |",
        "|---|---|---|",
        *(
            f"| {g} | {', '.join(f'{r[0]:,.0f}' for r in rates[g])} "
            f"(median {median(g, 0):,.0f}) | {', '.join(f'{r[1]:,.0f}' for r in rates[g])} "
            f"(median {median(g, 1):,.0f}) |"
            for g in GUARANTEES
        ),
        "",
        f"exactly_once / at_least_once (committed, medians): "
        f"{median('exactly_once', 1) / median('at_least_once', 1):.2f}x",
    ]
    RESULTS.mkdir(exist_ok=True)
    name = "exactly_once.md" if a.concurrency == 8 else f"exactly_once-c{a.concurrency}.md"
    (RESULTS / name).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

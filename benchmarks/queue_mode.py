"""S7: queue mode (share groups, KIP-932) against stream mode on one partition, and decode-only
throughput of both on 8 partitions. One run each; real `kafkaworker run` processes.

    python -m benchmarks.queue_mode --bootstrap HOST:PORT [--messages N] [--decode-messages N]

Rows (a 2 ms handler, one partition): stream mode, 1 process (partition ordering: one record
at a time); queue mode with 1, 2 and 4 processes x 8 threads. Throughput is counted from the
first to the last record handled, over every process (each appends a fixed-width line per
record). Records are produced in small record batches once every member has joined. The
backlog rows produce them first, in record batches of thousands, and start the members after:
the broker hands a share group whole record batches, and the first member to fetch shares
out what it would not start soon (poll/share_poller.py).
Results: benchmarks/results/queue_mode.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
LINE = 18  # bytes per handled record in a worker's file


def new_topic(bootstrap: str, partitions: int) -> str:
    name = f"s7-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, partitions, 1)])[name].result(timeout=30)
    return name


def produce(bootstrap: str, topic: str, count: int, *, batch: int, partitions: int) -> None:
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "batch.num.messages": batch,
            "linger.ms": 5,
            "queue.buffering.max.messages": 500_000,
        }
    )
    for i in range(count):
        value = orjson.dumps({"id": i, "customer": f"c-{i % 1000}", "pad": "x" * 40})
        producer.produce(topic, value, partition=i % partitions)
        if i % 1000 == 0:
            producer.poll(0)
    assert producer.flush(60) == 0


def _warm_then_produce(
    bootstrap: str,
    topic: str,
    *,
    mode: str,
    processes: int,
    partitions: int,
    counts: Callable[[], list[int]],
) -> tuple[list[int], float]:
    """Wait until every member has joined and handled something; the counts then, and the
    time the measured records start to be produced."""
    warm = 16 * processes
    produce(bootstrap, topic, warm, batch=2, partitions=partitions)
    deadline = time.monotonic() + 90
    while sum(counts()) < warm or (mode == "queue" and min(counts()) == 0):
        if time.monotonic() > deadline:
            raise RuntimeError(f"warm-up did not finish: {counts()} of {warm}")
        time.sleep(0.1)
        if sum(counts()) >= warm and mode == "queue" and min(counts()) == 0:
            produce(bootstrap, topic, processes, batch=1, partitions=partitions)
            warm += processes
    time.sleep(1.0)
    return list(counts()), time.time()


def run_row(
    bootstrap: str,
    *,
    mode: str,
    processes: int,
    messages: int,
    sleep_ms: float,
    partitions: int,
    batch: int,
    concurrency: int = 8,
    backlog: bool = False,
) -> dict[str, Any]:
    """One row; `backlog`: the records are produced before the members start."""
    topic = new_topic(bootstrap, partitions)
    group = f"s7-{mode}-{uuid.uuid4().hex[:6]}"
    workdir = Path(tempfile.mkdtemp(prefix="s7-"))
    files = [workdir / f"w{i}.txt" for i in range(processes)]
    env = {
        **os.environ,
        "KAFKAWORKER_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "KAFKAWORKER_LOG_LEVEL": "WARNING",
        "BENCH_TOPIC": topic,
        "BENCH_GROUP": group,
        "BENCH_MODE": mode,
        "BENCH_CONCURRENCY": str(concurrency),
        "BENCH_SLEEP_MS": str(sleep_ms),
    }
    if backlog:
        produce(bootstrap, topic, messages, batch=batch, partitions=partitions)
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "kafkaworker", "run", "benchmarks.contenders.queue_app:app"],
            cwd=ROOT,
            env={**env, "BENCH_FILE": str(path)},
            stdout=open(workdir / f"w{i}.log", "wb"),  # noqa: SIM115 - closed with the process
            stderr=subprocess.STDOUT,
        )
        for i, path in enumerate(files)
    ]

    def counts() -> list[int]:
        return [p.stat().st_size // LINE if p.exists() else 0 for p in files]

    try:
        if backlog:
            before, started = [0] * processes, time.time()
        else:
            before, started = _warm_then_produce(
                bootstrap,
                topic,
                mode=mode,
                processes=processes,
                partitions=partitions,
                counts=counts,
            )
            produce(bootstrap, topic, messages, batch=batch, partitions=partitions)
        deadline = time.monotonic() + 600
        while sum(counts()) - sum(before) < messages:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {sum(counts()) - sum(before)} of {messages} handled")
            time.sleep(0.05)
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for worker in workers:
            try:
                worker.wait(60)
            except subprocess.TimeoutExpired:
                worker.kill()
    stamps: list[float] = []
    per_process = []
    for path, skip in zip(files, before, strict=True):
        lines = path.read_bytes().split(b"\n")[skip:-1]
        per_process.append(len(lines))
        stamps.extend(float(s) for s in lines)
    stamps.sort()
    stamps = stamps[:messages]
    first = max(started, stamps[0] - 0.0)
    seconds = stamps[-1] - first
    return {
        "mode": mode,
        "processes": processes,
        "threads": concurrency,
        "partitions": partitions,
        "handler_ms": sleep_ms,
        "messages": messages,
        "seconds": round(seconds, 3),
        "per_second": round(messages / seconds),
        "per_process": per_process,
        "backlog": backlog,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--messages", type=int, default=6000)
    parser.add_argument("--decode-messages", type=int, default=100_000)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--skip-decode", action="store_true")
    a = parser.parse_args()
    rows = []
    common = {"messages": a.messages, "sleep_ms": 2.0, "partitions": 1, "batch": 8}
    stream_messages = max(1000, a.messages // 4)  # one record at a time: 2 ms each
    rows.append(
        run_row(a.bootstrap, mode="stream", processes=1, **{**common, "messages": stream_messages})
    )
    for processes in (1, 2, 4):
        rows.append(run_row(a.bootstrap, mode="queue", processes=processes, **common))
    # A backlog produced before the members start, in record batches of thousands; five
    # times as many records, so that the members' start-up (they join up to a second apart
    # here) weighs less against a second of work.
    for processes in (1, 2, 4):
        rows.append(
            run_row(
                a.bootstrap,
                mode="queue",
                processes=processes,
                backlog=True,
                **{**common, "batch": 10_000, "messages": 5 * a.messages},
            )
        )
    for row in rows:
        print(json.dumps(row), flush=True)
    decode = []
    if not a.skip_decode:
        for mode in ("stream", "queue"):
            decode.append(
                run_row(
                    a.bootstrap,
                    mode=mode,
                    processes=1,
                    messages=a.decode_messages,
                    sleep_ms=0,
                    partitions=8,
                    batch=10_000,
                )
            )
            print(json.dumps(decode[-1]), flush=True)
    stream = rows[0]["per_second"]
    one = rows[1]["per_second"]
    lines = [
        "## S7 queue mode (share groups) vs stream mode, one partition, 2 ms handler",
        "",
        "| mode | processes x threads | records/s | vs stream | vs ideal scaling | per process |",
        "|---|---|---:|---:|---:|---|",
    ]
    for row in rows:
        ideal = one * row["processes"]
        mode = f"{row['mode']}, backlog first" if row["backlog"] else row["mode"]
        lines.append(
            f"| {mode} | {row['processes']} x {row['threads']} | {row['per_second']} | "
            f"{row['per_second'] / stream:.1f}x | "
            + (f"{row['per_second'] / ideal:.2f}" if row["mode"] == "queue" else "-")
            + f" | {row['per_process']} |"
        )
    if decode:
        lines += [
            "",
            "## S7 decode only, 8 partitions, 1 process",
            "",
            "| mode | records/s |",
            "|---|---:|",
            *(f"| {row['mode']} | {row['per_second']} |" for row in decode),
        ]
    text = "\n".join(lines) + "\n"
    print(text)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "queue_mode.json").write_text(json.dumps({"s7": rows, "decode": decode}, indent=2))
    (a.out / "queue_mode.md").write_text(text)


if __name__ == "__main__":
    main()

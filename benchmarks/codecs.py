"""S1's codec rows: a decode-only handler in json, avro, json_schema and protobuf (a backlog of
S1's ~100-byte records on 8 partitions), each beside the raw confluent-kafka loop decoding the
same records with the same deserializer. One run of each; a real Schema Registry (Apicurio,
kafkaworker.testing.registry) unless --registry names one.

    python -m benchmarks.codecs [--messages N] [--bootstrap HOST:PORT] [--registry URL]
                                [--repeat N]

--repeat N runs the raw loop and kafkaworker N times each, alternately, on the same records: on
a machine loaded by others one pair is noise; the row shows every round's ratio and the median
round.

Target (issue 16): each kafkaworker row within 0.7x of the raw loop doing the same decoding.
Results: benchmarks/results/codecs.{json,md}.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

from benchmarks.run import (
    CONTENDERS,
    PARTITIONS,
    RESULTS,
    Contender,
    broker_for,
    new_topic,
    payload,
    run_contender,
)

sys.path.insert(0, str(CONTENDERS))
from _formats import codec_for

FORMATS = ("json", "avro", "json_schema", "protobuf")
AVRO_SCHEMA = json.dumps(
    {
        "type": "record",
        "name": "Payload",
        "namespace": "kwbench",
        "fields": [
            {"name": "id", "type": "long"},
            {"name": "ts", "type": "double"},
            {"name": "customer", "type": "string"},
            {"name": "pad", "type": "string"},
        ],
    }
)
JSON_SCHEMA = json.dumps(
    {
        "title": "Payload",
        "type": "object",
        "properties": {
            "id": {"type": "integer"},
            "ts": {"type": "number"},
            "customer": {"type": "string"},
            "pad": {"type": "string"},
        },
        "required": ["id", "ts", "customer", "pad"],
    }
)


def encoder(fmt: str, url: str) -> Callable[[str, int], bytes]:
    """encode(topic, i): S1's record i in `fmt` (registering its schema once)."""
    if fmt == "json":
        return lambda topic, i: payload(i)
    if fmt == "avro":
        from kafkaworker.serialization.avro import AvroCodec  # noqa: PLC0415

        avro = AvroCodec({"url": url}, writer_schema=AVRO_SCHEMA)
        return lambda topic, i: avro.encode_for(topic, _record(i))
    if fmt == "json_schema":
        from kafkaworker.serialization.json_schema import JsonSchemaCodec  # noqa: PLC0415

        schema = JsonSchemaCodec({"url": url}, schema=JSON_SCHEMA)
        return lambda topic, i: schema.encode_for(topic, _record(i))
    proto = codec_for("protobuf", url)
    message = proto.message_type
    return lambda topic, i: proto.encode_for(topic, message(**_record(i)))


def _record(i: int) -> dict[str, Any]:
    return {"id": i, "ts": 0.0, "customer": f"c-{i % 1000}", "pad": "x" * 40}


def produce(bootstrap: str, topic: str, count: int, encode: Callable[[str, int], bytes]) -> None:
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.num.messages": 10000}
    )
    for i in range(count):
        value = encode(topic, i)
        while True:
            try:
                producer.produce(topic, value, partition=i % PARTITIONS)
                break
            except BufferError:
                producer.poll(0.01)
    producer.flush(120)


@contextlib.contextmanager
def registry_for(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    from kafkaworker.testing.registry import SchemaRegistry  # noqa: PLC0415

    with SchemaRegistry() as registry:
        yield registry.url


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# S1 codec rows ({report['when']})",
        "",
        f"{report['messages']:,} records of ~100 bytes (JSON) on {PARTITIONS} partitions, a "
        "decode-only handler; x raw: against the raw confluent-kafka loop decoding the same "
        f"records with the same deserializer. {report.get('repeat', 1)} round(s) of each, "
        f"alternately (the msg/s columns: the median round); {report['machine']}, the broker "
        f"and the registry on the same machine; kafkaworker with {report['concurrency']} "
        "worker threads. Target: x raw >= 0.70.",
        "",
        "| format | raw msg/s | kafkaworker msg/s | x raw | x raw per round "
        "| CPU s / 1M (raw, kafkaworker) | CPU x raw per round |",
        "|---|---:|---:|---:|---|---:|---|",
    ]
    for row in report["rows"]:
        raw, kw = row["raw"], row["kafkaworker"]
        if "error" in raw or "error" in kw:
            lines.append(
                f"| {row['format']} | {raw.get('error', '')} | {kw.get('error', '')} | | | | |"
            )
            continue
        ratio = kw["msgs_per_s"] / raw["msgs_per_s"]
        rounds = ", ".join(f"{r['ratio']:.2f}" for r in row.get("rounds", []))
        cpu = ", ".join(
            f"{r['raw']['cpu_s_per_million'] / r['kafkaworker']['cpu_s_per_million']:.2f}"
            for r in row.get("rounds", [])
        )
        lines.append(
            f"| {row['format']} | {raw['msgs_per_s']:,.0f} | {kw['msgs_per_s']:,.0f} | "
            f"{ratio:.2f} | {rounds} | "
            f"{raw['cpu_s_per_million']:.1f}, {kw['cpu_s_per_million']:.1f} | {cpu} |"
        )
    lines += [
        "",
        "CPU x raw: the raw loop's CPU seconds per record over kafkaworker's (1.00: no runtime "
        "cost). msg/s also measures how much CPU each process was given, and on a machine "
        "loaded by others kafkaworker's threads compete for it better than the raw loop's one; "
        "CPU seconds are noisy too (they stretch on shared cores), but not that way."
        + (
            f" Load average (1 min) at the start and the end: {report['load'][0]:.1f}, "
            f"{report['load'][1]:.1f}."
            if "load" in report
            else ""
        ),
    ]
    return "\n".join(lines) + "\n"


def _ratio(pair: dict[str, Any]) -> float | None:
    raw, kw = pair["raw"], pair["kafkaworker"]
    if "msgs_per_s" not in raw or "msgs_per_s" not in kw:
        return None
    return float(kw["msgs_per_s"]) / float(raw["msgs_per_s"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--bootstrap", default=os.environ.get("KAFKAWORKER_BENCH_BOOTSTRAP"))
    parser.add_argument("--registry", help="a registry's Confluent API URL (default: start one)")
    parser.add_argument("--concurrency", help="kafkaworker's worker threads (default: its 8)")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of raw + kafkaworker")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    python = sys.executable
    report: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": f"{os.cpu_count()} cores",
        "messages": args.messages,
        "concurrency": args.concurrency or "8 (the default)",
        "repeat": args.repeat,
        "load_at_start": os.getloadavg()[0],
        "rows": [],
    }
    with broker_for(args.bootstrap) as (bootstrap, _), registry_for(args.registry) as url:
        for fmt in args.formats.split(","):
            topic = new_topic(bootstrap, f"s1-{fmt}")
            started = time.monotonic()
            produce(bootstrap, topic, args.messages, encoder(fmt, url))
            print(f"{fmt}: produced in {time.monotonic() - started:.1f}s", flush=True)
            options = {"format": fmt, "registry": url}
            threads = {"concurrency": args.concurrency} if args.concurrency else {}
            rounds: list[dict[str, Any]] = []
            for turn in range(args.repeat):
                pair: dict[str, Any] = {}
                for key, script, extra in (
                    ("raw", "codec_raw.py", {}),
                    ("kafkaworker", "codec_app.py", threads),
                ):
                    contender = Contender(f"{key} {fmt}", script, python, {**options, **extra})
                    pair[key] = run_contender(
                        contender, bootstrap, topic, args.messages, timeout=600
                    )
                    result = pair[key].get("msgs_per_s", pair[key])
                    print(f"{fmt}: round {turn + 1}: {key}: {result}", flush=True)
                pair["ratio"] = _ratio(pair)
                rounds.append(pair)
            # The median round by ratio (a failed round, if any, stands for the row).
            failed = [r for r in rounds if r["ratio"] is None]
            ranked = sorted(rounds, key=lambda r: r["ratio"] or 0.0)
            median = failed[0] if failed else ranked[len(ranked) // 2]
            report["rows"].append(
                {
                    "format": fmt,
                    "raw": median["raw"],
                    "kafkaworker": median["kafkaworker"],
                    "rounds": [] if failed else rounds,
                }
            )
    report["load"] = [report.pop("load_at_start"), os.getloadavg()[0]]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "codecs.json").write_text(json.dumps(report, indent=2))
    text = markdown(report)
    (args.out / "codecs.md").write_text(text)
    print("\n" + text)
    failed = [r for r in report["rows"] if "error" in r["raw"] or "error" in r["kafkaworker"]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

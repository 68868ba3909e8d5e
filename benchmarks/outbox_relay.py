"""The outbox relay's throughput and latency, with a real broker (kafkaworker.testing.broker)
and a throwaway PostgreSQL (kafkaworker.testing.postgres):

- throughput: N rows (1,000 keys, 8 partitions) committed before the relay starts, then
  records/s from the relay's start until every row is marked published (acknowledged by the
  broker, acks=all). Issue 27's S9 asks for >= 20,000 records/s.
- latency: single-row transactions at a steady rate while the relay runs; per row, its
  marking time minus its transaction's start (published_at - created_at): an upper bound of
  the time from the commit to the broker's acknowledgement, p50 and p99.

    python -m benchmarks.outbox_relay [--rows N] [--batch N] [--rate R --seconds S]
"""

from __future__ import annotations

import argparse
import logging
import time
import uuid
from typing import Any

import psycopg
import structlog
from confluent_kafka.admin import AdminClient, NewTopic

from kafkaworker import Settings
from kafkaworker.postgres import PostgresOutbox
from kafkaworker.testing.broker import Cluster
from kafkaworker.testing.postgres import PostgresServer

PARTITIONS = 8
KEYS = 1000


def throughput(
    outbox: PostgresOutbox, url: str, settings: Settings, topic: str, rows: int
) -> float:
    """records/s from the commit of `rows` rows until the relay marked them all, the relay
    warmed up first (its producer has its idempotent producer id and the topic's metadata)."""
    relay = outbox.relay(settings).start()
    try:
        with psycopg.connect(url, autocommit=True) as db:
            outbox.add(db, topic, b"warm-up")
            while relay.published < 1:
                time.sleep(0.005)
            with db.transaction(), db.cursor() as cursor:
                # Rows as outbox.add writes them, in bulk (the subject is the relay).
                cursor.executemany(
                    "insert into kafkaworker_outbox (topic, key, value) values (%s, %s, %s)",
                    [(topic, b"k%d" % (i % KEYS), b'{"n":%d}' % i) for i in range(rows)],
                )
                cursor.execute("select pg_notify(%s, '')", (outbox.channel,))
            started = time.monotonic()
        # The relay's own count: a count(*) every few ms would compete with it for the CPU.
        while relay.published < rows + 1:
            time.sleep(0.005)
        return rows / (time.monotonic() - started)
    finally:
        relay.stop()


def latency(
    outbox: PostgresOutbox, url: str, settings: Settings, topic: str, *, rate: float, seconds: float
) -> tuple[float, float, int]:
    relay = outbox.relay(settings).start()
    try:
        while not relay.active.is_set():
            time.sleep(0.01)
        # Autocommit: each `with db.transaction()` is a transaction, not a savepoint.
        with psycopg.connect(url, autocommit=True) as db:
            first = db.execute("select coalesce(max(id), 0) from kafkaworker_outbox").fetchone()
            floor = int(first[0]) if first else 0
            sent, started = 0, time.monotonic()
            while time.monotonic() - started < seconds:
                with db.transaction():
                    outbox.add(db, topic, {"n": sent}, key=f"k{sent % KEYS}")
                sent += 1
                time.sleep(max(0.0, started + sent / rate - time.monotonic()))
            while True:
                left = db.execute(
                    "select count(*) from kafkaworker_outbox where id > %s and "
                    "published_at is null",
                    (floor,),
                ).fetchone()
                if left == (0,):
                    break
                time.sleep(0.02)
            waits = [
                float(row[0])
                for row in db.execute(
                    "select extract(epoch from published_at - created_at) from "
                    "kafkaworker_outbox where id > %s order by 1",
                    (floor,),
                ).fetchall()
            ]
    finally:
        relay.stop()
    return waits[len(waits) // 2], waits[int(len(waits) * 0.99)], len(waits)


def measure(
    bootstrap: str, url: str, *, rows: int, batch: int, rate: float, seconds: float
) -> dict[str, Any]:
    """Both figures on a topic of its own (8 partitions): `make bench`'s S9 relay row."""
    topic = f"outbox-bench-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, PARTITIONS, 1)])[topic].result(30)
    settings = Settings.model_validate(
        {"kafka": {"bootstrap_servers": bootstrap}, "log_level": "WARNING"}
    )
    outbox = PostgresOutbox(url, batch=batch)
    records_per_s = throughput(outbox, url, settings, topic, rows)
    p50, p99, n = latency(outbox, url, settings, topic, rate=rate, seconds=seconds)
    return {
        "rows": rows,
        "batch": batch,
        "records_per_s": records_per_s,
        "rate": rate,
        "latency_rows": n,
        "commit_to_ack_p50_ms": p50 * 1000,
        "commit_to_ack_p99_ms": p99 * 1000,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=500.0, help="latency: rows/s")
    parser.add_argument("--seconds", type=float, default=10.0, help="latency: how long")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    server = PostgresServer().start()
    try:
        with Cluster(1) as cluster:
            r = measure(
                cluster.bootstrap,
                server.url,
                rows=args.rows,
                batch=args.batch,
                rate=args.rate,
                seconds=args.seconds,
            )
            print(
                f"throughput: {args.rows} rows, batch {args.batch}: "
                f"{r['records_per_s']:,.0f} records/s"
            )
            print(
                f"latency at {args.rate:g} rows/s ({r['latency_rows']} rows): commit -> "
                f"acknowledged and marked p50 {r['commit_to_ack_p50_ms']:.1f} ms, "
                f"p99 {r['commit_to_ack_p99_ms']:.1f} ms"
            )
    finally:
        server.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

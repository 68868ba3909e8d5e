"""The outbox's relay under kill -9, as a real `kafkaworker outbox relay` process, with a
real broker and a real PostgreSQL: every row is published, a key's records keep their order,
a record published again carries the same kw.outbox.id, and an inbox downstream applies each
exactly once."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from kafkaworker import App, Message
from kafkaworker.postgres import PostgresInbox, PostgresOutbox
from tests.conftest import TopicFactory
from tests.support import (
    ROOT,
    WorkerProcess,
    end_offsets,
    make_settings,
    read_topic,
    report_fault,
    running,
    wait_until,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

ROWS, KEYS, PARTITIONS = 5000, 50, 4
# Marking a round's rows published takes 50 ms more (a statement trigger): a kill lands in
# the window between the broker's acknowledgement and the mark as often as a slow database
# makes it, so that the kills leave records published and not marked, to be published again.
SLOW_MARK = """
create function slow_mark() returns trigger language plpgsql as
$$ begin perform pg_sleep(0.05); return null; end $$;
create trigger slow_mark after update on kafkaworker_outbox
for each statement execute function slow_mark()
"""


RELAY_APP = "tests.apps.outbox_relay:app"


class RelayProcess(WorkerProcess):
    """`kafkaworker outbox relay tests.apps.outbox_relay:app`."""

    def start(self) -> RelayProcess:
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "kafkaworker", "outbox", "relay", RELAY_APP],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return self


def count(url: str, query: str) -> int:
    with psycopg.connect(url) as db:
        row = db.execute(query).fetchone()
    return int(row[0]) if row else 0


PUBLISHED = "select count(*) from kafkaworker_outbox where published_at is not null"
MARKING = (
    "select count(*) from pg_stat_activity where state = 'active' "
    "and query like 'update \"kafkaworker_outbox\" set published_at%'"
)


def test_relay_killed_3_times_every_row_published_in_key_order_applied_once_downstream(
    kafka_bootstrap: str, new_topic: TopicFactory, postgres_url: str, tmp_path: Path
) -> None:
    topic = new_topic(PARTITIONS)
    outbox = PostgresOutbox(postgres_url)
    with psycopg.connect(postgres_url) as db:
        with db.transaction():
            for n in range(ROWS):
                key = f"k{n % KEYS}"
                outbox.add(db, topic, f"{key}:{n // KEYS}".encode(), key=key)
        db.execute(SLOW_MARK)
        # A statement whose client died ends with it (PostgreSQL 14+), rather than run on and
        # commit the mark of a relay killed meanwhile.
        db.execute(
            sql.SQL("alter database {} set client_connection_check_interval = 10").format(
                sql.Identifier(db.info.dbname)
            )
        )
        db.execute("create table ledger (outbox_id bigint, key text, value text)")

    # The inbox downstream: a ledger row per record it applies (no unique constraint).
    downstream = App("ledger")

    @downstream.handler(topic, inbox=PostgresInbox(postgres_url), codec="raw", concurrency=4)
    def apply(msg: Message[bytes], db: psycopg.Connection) -> None:
        db.execute(
            "insert into ledger values (%s, %s, %s)",
            (int(msg.header("kw.outbox.id") or b"0"), (msg.key or b"").decode(), msg.value),
        )

    env = {"OUTBOX_URL": postgres_url, "OUTBOX_BATCH": "100"}
    log = tmp_path / "relay.txt"
    with running(downstream, make_settings(kafka_bootstrap)):
        for kill in range(1, 4):
            relay = RelayProcess(kafka_bootstrap, topic, log, **env).start()
            try:
                # Killed while it marks a round the broker acknowledged (its update in the
                # slow trigger): that round is published again by the next relay.
                wait_until(
                    lambda k=kill: (
                        count(postgres_url, PUBLISHED) >= k * 1000
                        and count(postgres_url, MARKING) > 0
                    ),
                    60,
                    f"{kill * 1000} rows published, and a round being marked",
                    step=0.005,
                )
                assert count(postgres_url, PUBLISHED) < ROWS, "killed after the end"
            finally:
                relay.kill()  # SIGKILL: no flush, no mark
            print(f"relay killed at {count(postgres_url, PUBLISHED)} rows marked published")
        relay = RelayProcess(kafka_bootstrap, topic, log, **env).start()
        try:
            wait_until(lambda: count(postgres_url, PUBLISHED) == ROWS, 60, "every row published")
        finally:
            relay.signal(signal.SIGTERM)
            assert relay.wait(30) == 0, relay.output()[-3000:]
        published = sum(end_offsets(kafka_bootstrap, topic, PARTITIONS).values())
        wait_until(lambda: count(postgres_url, "select count(*) from ledger") >= ROWS, 60, "all")
        records = read_topic(kafka_bootstrap, topic, published)

    by_id: dict[int, tuple[bytes, bytes]] = {}
    firsts: dict[bytes, list[int]] = {}
    repeats = 0
    for record in records:  # in each partition's order; a key is in one partition
        row_id = int(dict(record.headers())["kw.outbox.id"])
        if row_id in by_id:
            repeats += 1
            assert by_id[row_id] == (record.key(), record.value()), "a repeat of another row"
            continue
        by_id[row_id] = (record.key(), record.value())
        firsts.setdefault(record.key(), []).append(int(record.value().split(b":")[1]))
    lost = ROWS - len(by_id)
    in_order = all(seen == list(range(ROWS // KEYS)) for seen in firsts.values())
    ledger_rows = count(postgres_url, "select count(*) from ledger")
    applied = count(postgres_url, "select count(distinct outbox_id) from ledger")
    applied_twice = ledger_rows - applied
    print(f"{len(records)} records for {ROWS} rows: {repeats} published again")
    assert (lost, in_order, len(firsts)) == (0, True, KEYS)
    assert (ledger_rows, applied_twice) == (ROWS, 0)
    # The kills left acknowledged rows unmarked, and their repeats were deduplicated.
    assert repeats > 0
    report_fault(
        f"outbox: relay killed (kill -9) three times while publishing; {repeats} records "
        "published again, each applied once by an inbox downstream",
        ROWS,
        lost,
        applied_twice,
        None,
    )

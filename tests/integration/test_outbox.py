"""The outbox with a real PostgreSQL and a real broker, in-process: what a committed
transaction adds is published with its kw.outbox.id, what a rolled-back one adds never is, a
key's records keep their order, a NOTIFY wakes the relay long before its polling interval,
and a standby relay takes over when the active one stops."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from confluent_kafka.admin import NewTopic

from kafkaworker import App, Message
from kafkaworker.outbox import OutboxRelay
from kafkaworker.postgres import PostgresInbox, PostgresOutbox
from kafkaworker.testing.jvm import free_port
from tests.conftest import TopicFactory
from tests.metrics_support import get, samples, total
from tests.support import end_offsets, make_settings, produce, read_topic, running, wait_until

pytestmark = pytest.mark.kafka


def published(url: str) -> int:
    with psycopg.connect(url) as db:
        row = db.execute(
            "select count(*) from kafkaworker_outbox where published_at is not null"
        ).fetchone()
    return int(row[0]) if row else 0


def outbox_id(record: Any) -> int:
    return int(dict(record.headers() or [])["kw.outbox.id"])


@contextlib.contextmanager
def relaying(outbox: PostgresOutbox, bootstrap: str) -> Iterator[OutboxRelay]:
    relay = outbox.relay(make_settings(bootstrap)).start()
    try:
        yield relay
    finally:
        relay.stop()


def test_a_handler_with_an_inbox_adds_to_the_outbox_and_kafkaworker_run_relays_it(
    kafka_bootstrap: str, new_topic: TopicFactory, postgres_url: str
) -> None:
    orders, events = new_topic(1), new_topic(1)
    outbox = PostgresOutbox(postgres_url)
    app = App("shop")
    app.outbox(outbox)

    @app.handler(orders, inbox=PostgresInbox(postgres_url), codec="raw")
    def paid(msg: Message[bytes], db: psycopg.Connection) -> None:
        outbox.add(db, events, {"order": int(msg.value), "state": "paid"}, key=msg.value)

    produce(kafka_bootstrap, orders, [b"1", b"2"])
    with running(app, make_settings(kafka_bootstrap)):
        # A request's transaction that fails: its record is never published.
        with psycopg.connect(postgres_url) as db:
            with contextlib.suppress(RuntimeError), db.transaction():
                outbox.add(db, events, {"order": 99, "state": "paid"}, key="99")
                raise RuntimeError("the request failed")
            with db.transaction():
                outbox.add(db, events, {"order": 3, "state": "paid"}, key="3")
        records = read_topic(kafka_bootstrap, events, 3)
        wait_until(lambda: published(postgres_url) == 3, 10, "3 rows marked published")
    assert sorted(record.value() for record in records) == [
        b'{"order":1,"state":"paid"}',
        b'{"order":2,"state":"paid"}',
        b'{"order":3,"state":"paid"}',
    ]
    with psycopg.connect(postgres_url) as db:
        rows = db.execute(
            "select id, key from kafkaworker_outbox where published_at is not null order by id"
        ).fetchall()
        assert db.execute("select count(*) from kafkaworker_outbox").fetchone() == (3,)
    assert sorted((outbox_id(r), r.key()) for r in records) == [(i, bytes(k)) for i, k in rows]
    # Nothing more comes: the rolled-back record is not on the topic.
    assert len(read_topic(kafka_bootstrap, events, 3, timeout=2)) == 3


def test_each_keys_records_keep_their_order(
    kafka_bootstrap: str, new_topic: TopicFactory, postgres_url: str
) -> None:
    topic, keys, per_key = new_topic(4), 20, 50
    outbox = PostgresOutbox(postgres_url, batch=97)  # rounds that cut through the keys
    with relaying(outbox, kafka_bootstrap) as relay:
        wait_until(relay.active.is_set, 10, "the relay active")
        with psycopg.connect(postgres_url) as db:
            for n in range(per_key):
                with db.transaction():  # a transaction per round of keys
                    for k in range(keys):
                        outbox.add(db, topic, b"%d" % n, key=f"k{k}")
        records = read_topic(kafka_bootstrap, topic, keys * per_key)
    by_key: dict[bytes, list[int]] = {}
    for record in records:
        by_key.setdefault(record.key(), []).append(int(record.value()))
    assert len(by_key) == keys
    assert all(seen == list(range(per_key)) for seen in by_key.values())


def test_a_notify_wakes_the_relay_in_milliseconds_not_its_polling_interval(
    kafka_bootstrap: str, new_topic: TopicFactory, postgres_url: str
) -> None:
    topic = new_topic(1)
    outbox = PostgresOutbox(postgres_url, poll_interval=60)
    latencies = []
    with relaying(outbox, kafka_bootstrap) as relay:
        wait_until(relay.active.is_set, 10, "the relay active")
        for n in range(5):
            with psycopg.connect(postgres_url) as db:
                outbox.add(db, topic, b"%d" % n)
            started = time.monotonic()
            wait_until(lambda n=n: published(postgres_url) == n + 1, 10, "published", step=0.002)
            latencies.append(time.monotonic() - started)
        with psycopg.connect(postgres_url) as db:
            row = db.execute(
                "select max(extract(epoch from published_at - created_at)) from kafkaworker_outbox"
            ).fetchone()
    print(f"commit -> marked published: {[round(s * 1000) for s in latencies]} ms, db max {row}")
    # Well below the 60 s polling interval; milliseconds on an idle machine.
    assert max(latencies) < 2.0


def test_one_relay_is_active_and_a_standby_takes_over_when_it_stops(
    kafka_bootstrap: str, new_topic: TopicFactory, postgres_url: str
) -> None:
    topic = new_topic(1)
    outbox = PostgresOutbox(postgres_url)
    with relaying(outbox, kafka_bootstrap) as first, relaying(outbox, kafka_bootstrap) as second:
        wait_until(lambda: first.active.is_set() or second.active.is_set(), 10, "one active")
        active, standby = (first, second) if first.active.is_set() else (second, first)
        time.sleep(2.5)  # two of the standby's lock attempts: it must still stand by
        assert not standby.active.is_set()
        with psycopg.connect(postgres_url) as db:
            outbox.add(db, topic, b"before")
        wait_until(lambda: published(postgres_url) == 1, 10, "published by the active relay")
        assert (active.published, standby.published) == (1, 0)
        stopped = time.monotonic()
        active.stop()
        wait_until(standby.active.is_set, 10, "the standby taking over")
        took_over = time.monotonic() - stopped
        with psycopg.connect(postgres_url) as db:
            outbox.add(db, topic, b"after")
        wait_until(lambda: published(postgres_url) == 2, 10, "published by the new active one")
        assert standby.published == 1
    records = read_topic(kafka_bootstrap, topic, 2)
    assert [r.value() for r in records] == [b"before", b"after"]
    print(f"the standby took over {took_over:.2f} s after the active relay stopped")
    assert took_over < 3.0


def test_add_async_writes_in_the_async_connections_transaction(
    kafka_bootstrap: str, new_topic: TopicFactory, postgres_url: str
) -> None:
    topic = new_topic(1)
    outbox = PostgresOutbox(postgres_url)

    async def add() -> None:
        async with await psycopg.AsyncConnection.connect(postgres_url) as db:
            with contextlib.suppress(RuntimeError):
                async with db.transaction():
                    await outbox.add_async(db, topic, {"n": 0}, key="a")
                    raise RuntimeError("rolled back")
            async with db.transaction():
                await outbox.add_async(db, topic, {"n": 1}, key="a", headers=[("h", "v")])

    asyncio.run(add())  # before any relay: the first add creates the table
    with relaying(outbox, kafka_bootstrap):
        (record,) = read_topic(kafka_bootstrap, topic, 1)
        wait_until(lambda: published(postgres_url) == 1, 10, "marked published")
    assert record.value() == b'{"n":1}'
    assert record.headers() == [("h", b"v"), ("kw.outbox.id", str(outbox_id(record)).encode())]
    assert len(read_topic(kafka_bootstrap, topic, 1, timeout=2)) == 1


def test_the_relays_metrics_are_on_the_workers_metrics_endpoint(
    kafka_bootstrap: str, new_topic: TopicFactory, postgres_url: str
) -> None:
    orders, events, port = new_topic(1), new_topic(2), free_port()
    outbox = PostgresOutbox(postgres_url)
    app = App("relay-metrics")
    app.outbox(outbox)

    @app.handler(orders, codec="raw")
    def idle(msg: Message[bytes]) -> None:
        pass

    def value(name: str) -> float:
        return total(port, name, table="kafkaworker_outbox")

    settings = make_settings(kafka_bootstrap, metrics={"port": port, "host": "127.0.0.1"})
    with running(app, settings):
        wait_until(lambda: value("kafkaworker_outbox_relay_active") == 1, 30, "relay active")
        with psycopg.connect(postgres_url) as db, db.transaction():
            db.execute("select pg_sleep(0.05)")  # the rows' transaction lasts 50 ms at least
            for i in range(50):
                outbox.add(db, events, i, key=str(i % 5))
        read_topic(kafka_bootstrap, events, 50)
        wait_until(
            lambda: value("kafkaworker_outbox_published_total") == 50, 10, "50 counted published"
        )
        assert value("kafkaworker_outbox_publish_seconds_count") == 50
        # Each row's latency includes its transaction's 50 ms: the histogram has them all above.
        assert value("kafkaworker_outbox_publish_seconds_sum") >= 50 * 0.05
        below = samples(port)["kafkaworker_outbox_publish_seconds_bucket"]
        assert dict((s[0]["le"], s[1]) for s in below)["0.05"] == 0
        wait_until(
            lambda: (
                "kafkaworker_outbox_backlog" in samples(port)
                and value("kafkaworker_outbox_backlog") == 0
            ),
            10,
            "the backlog counted back to 0",
        )


def test_a_row_that_cannot_be_published_holds_back_its_key_and_no_other(
    kafka_bootstrap: str, new_topic: TopicFactory, postgres_url: str
) -> None:
    """k:1 is larger than the producer's message.max.bytes (librdkafka refuses it at once):
    k:0 and the other key's rows are published once each, k:2 waits behind k:1 round after
    round; once k:1 is fixed (the row updated by hand), k:1 then k:2 follow, each once."""
    topic = new_topic(1)
    outbox = PostgresOutbox(postgres_url, poll_interval=0.2)
    too_large = b"x" * 1_500_000
    with psycopg.connect(postgres_url) as db:
        for key, value in (("k", b"0"), ("k", too_large), ("k", b"2"), ("j", b"0"), ("j", b"1")):
            outbox.add(db, topic, value, key=key)
    with relaying(outbox, kafka_bootstrap) as relay:
        wait_until(lambda: relay.published == 3, 30, "k:0, j:0, j:1 published")
        # A round after the failure: j:2 goes through while k:1 and k:2 are still waiting.
        with psycopg.connect(postgres_url) as db:
            outbox.add(db, topic, b"2", key="j")
        wait_until(lambda: relay.published == 4, 30, "j:2 published")
        early = read_topic(kafka_bootstrap, topic, 4)
        assert sorted((r.key(), r.value()) for r in early) == [
            (b"j", b"0"),
            (b"j", b"1"),
            (b"j", b"2"),
            (b"k", b"0"),
        ]
        assert unpublished_ids(postgres_url) == [2, 3]  # k:1 and k:2 behind it
        with psycopg.connect(postgres_url) as db:
            db.execute("update kafkaworker_outbox set value = '1' where id = 2")
        wait_until(lambda: relay.published == 6, 30, "k:1 then k:2 published")
    assert end_offsets(kafka_bootstrap, topic, 1) == {0: 6}  # no record published twice
    records = read_topic(kafka_bootstrap, topic, 6)
    assert sorted(outbox_id(r) for r in records) == [1, 2, 3, 4, 5, 6]
    assert [r.value() for r in records if r.key() == b"k"] == [b"0", b"1", b"2"]


def unpublished_ids(url: str) -> list[int]:
    with psycopg.connect(url) as db:
        rows = db.execute(
            "select id from kafkaworker_outbox where published_at is null order by id"
        ).fetchall()
    return [int(row[0]) for row in rows]


def test_a_row_the_broker_refuses_publishes_no_later_row_of_its_key_first(
    kafka_bootstrap: str, admin: Any, postgres_url: str
) -> None:
    """k:1 fits the producer's limit but not the topic's max.message.bytes (2,000): the broker
    refuses its delivery. No record of key k after it is on the topic before it: once k:1 is
    made to fit, k's records come first-time in order 0, 1, 2, and every row is published.
    Seen here: the broker refuses the whole produce batch k:1 travels in (all 4 rows, j:0
    included), round after round, so nothing of that partition is published until k:1 fits;
    a batch split elsewhere would leave an acknowledged k:2 unmarked, sent again after k:1."""
    topic = f"t-{uuid.uuid4().hex[:12]}"
    config = {"max.message.bytes": "2000"}
    admin.create_topics([NewTopic(topic, 1, 1, config=config)])[topic].result(30)
    outbox = PostgresOutbox(postgres_url, poll_interval=0.2)
    with psycopg.connect(postgres_url) as db:
        for key, value in (("k", b"0"), ("k", b"x" * 5000), ("k", b"2"), ("j", b"0")):
            outbox.add(db, topic, value, key=key)
    with relaying(outbox, kafka_bootstrap) as relay:
        wait_until(lambda: 2 in unpublished_ids(postgres_url) and relay.active.is_set(), 30, "up")
        # Two rounds at least have met k:1's refusal: the next row added is published after.
        with psycopg.connect(postgres_url) as db:
            outbox.add(db, new_topic_for(admin), b"probe")
        wait_until(lambda: 5 not in unpublished_ids(postgres_url), 30, "the probe published")
        before = end_offsets(kafka_bootstrap, topic, 1)[0]
        early = read_topic(kafka_bootstrap, topic, before) if before else []
        assert b"2" not in [r.value() for r in early if r.key() == b"k"], early
        with psycopg.connect(postgres_url) as db:
            db.execute("update kafkaworker_outbox set value = '1' where id = 2")
        wait_until(lambda: unpublished_ids(postgres_url) == [], 30, "every row published")
    records = read_topic(kafka_bootstrap, topic, end_offsets(kafka_bootstrap, topic, 1)[0])
    firsts: list[bytes] = []
    for record in records:
        if record.key() == b"k" and record.value() not in firsts:
            firsts.append(record.value())
    assert firsts == [b"0", b"1", b"2"]
    assert {outbox_id(r) for r in records} == {1, 2, 3, 4}
    admin.delete_topics([topic])


def new_topic_for(admin: Any) -> str:
    name = f"t-{uuid.uuid4().hex[:12]}"
    admin.create_topics([NewTopic(name, 1, 1)])[name].result(30)
    return name


def test_a_row_for_a_missing_topic_waits_without_holding_back_the_other_topics(
    kafka_bootstrap: str, admin: Any, new_topic: TopicFactory, postgres_url: str
) -> None:
    """A row for a topic that does not exist is not produced (librdkafka would fail it only
    after 30 s, every round, and every other row of the round would wait as long): the rows
    after it for other topics are published within seconds; once the topic is created, the
    row follows."""
    present, missing = new_topic(1), f"t-{uuid.uuid4().hex[:12]}"
    outbox = PostgresOutbox(postgres_url, poll_interval=0.2)
    with psycopg.connect(postgres_url) as db:
        outbox.add(db, missing, b"m0", key="k")
        outbox.add(db, present, b"p0", key="k")
    with relaying(outbox, kafka_bootstrap):
        started = time.monotonic()
        wait_until(lambda: unpublished_ids(postgres_url) == [1], 10, "the present topic's row")
        assert time.monotonic() - started < 10
        admin.create_topics([NewTopic(missing, 1, 1)])[missing].result(30)
        wait_until(lambda: unpublished_ids(postgres_url) == [], 30, "the row once its topic is")
    assert [r.value() for r in read_topic(kafka_bootstrap, missing, 1)] == [b"m0"]
    admin.delete_topics([missing])


def test_the_relay_run_alone_serves_its_metrics_and_health_on_metrics_port(
    kafka_bootstrap: str, new_topic: TopicFactory, postgres_url: str, tmp_path: Path
) -> None:
    """`kafkaworker outbox relay` as its own process, with metrics.port set: /metrics has the
    relay's counters, /healthz and /readyz answer 200 (it says whether it is active), and
    SIGTERM ends it with 0."""
    from tests.faults.test_outbox import RelayProcess  # noqa: PLC0415 - the process, shared

    events, port = new_topic(2), free_port()
    outbox = PostgresOutbox(postgres_url)
    relay = RelayProcess(
        kafka_bootstrap,
        events,
        tmp_path / "relay.txt",
        OUTBOX_URL=postgres_url,
        KAFKAWORKER_METRICS__PORT=str(port),
        KAFKAWORKER_METRICS__HOST="127.0.0.1",
    ).start()

    def value(name: str) -> float:
        return total(port, name, table="kafkaworker_outbox")

    try:
        wait_until(
            lambda: (
                get(port, "/metrics")[0] == 200 and value("kafkaworker_outbox_relay_active") == 1
            ),
            60,
            "the relay active, on its /metrics",
        )
        status, body = get(port, "/readyz")
        assert (status, get(port, "/healthz")[0]) == (200, 200)
        assert orjson.loads(body)["active"] is True
        with psycopg.connect(postgres_url) as db, db.transaction():
            for i in range(20):
                outbox.add(db, events, i, key=str(i % 5))
        read_topic(kafka_bootstrap, events, 20)
        wait_until(
            lambda: value("kafkaworker_outbox_published_total") == 20, 10, "20 counted published"
        )
    finally:
        relay.signal(signal.SIGTERM)
        code = relay.wait(30)
    assert code == 0, relay.output()[-3000:]
    assert get(port, "/metrics")[0] == 0  # closed with the relay

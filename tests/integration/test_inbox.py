"""The inbox with a real broker, in-process (`kafkaworker run`'s Runner): the background
cleanup deletes the rows below the group's committed offsets, and only those."""

from __future__ import annotations

import psycopg
import pytest

from kafkaworker import App, Message
from kafkaworker.observability.metrics import Metrics
from kafkaworker.postgres import PostgresInbox
from tests.conftest import TopicFactory
from tests.support import committed, end_offsets, make_settings, produce, running, wait_until

pytestmark = pytest.mark.kafka


def inbox_count(url: str, group: str) -> int:
    with psycopg.connect(url) as db:
        row = db.execute(
            "select count(*) from kafkaworker_inbox where group_id = %s", (group,)
        ).fetchone()
    return int(row[0]) if row else 0


def test_the_cleanup_deletes_the_rows_below_the_committed_offsets_only(
    kafka_bootstrap: str, new_topic: TopicFactory, postgres_url: str
) -> None:
    topic = new_topic(2)
    group = f"g-{topic}"
    produce(
        kafka_bootstrap,
        topic,
        [b"%d" % i for i in range(40)],
        partitions=[i % 2 for i in range(40)],
    )
    handled: list[int] = []
    app = App("svc")
    inbox = PostgresInbox(postgres_url, cleanup_every=0.2, cleanup_after=0)

    @app.handler(topic, group=group, inbox=inbox, codec="raw", concurrency=2)
    def handle(msg: Message[bytes], db: psycopg.Connection) -> None:
        db.execute("select 1")
        handled.append(msg.offset)

    with psycopg.connect(postgres_url) as db:
        # Created by hand before the run: a row above the committed offsets (handled, not
        # committed: it must stay, its message may come again) and another group's row.
        db.execute(
            "create table kafkaworker_inbox (group_id text not null, topic text not null, "
            'partition integer not null, "offset" bigint not null, handled_at timestamptz '
            'not null default now(), primary key (group_id, topic, partition, "offset"))'
        )
        db.execute(
            'insert into kafkaworker_inbox (group_id, topic, partition, "offset") values '
            "(%s, %s, 0, 1000), ('other', %s, 0, 1)",
            (group, topic, topic),
        )
    with running(app, make_settings(kafka_bootstrap)):
        wait_until(
            lambda: (
                committed(kafka_bootstrap, group, topic, 2)
                == end_offsets(kafka_bootstrap, topic, 2)
            ),
            60,
            "offsets committed to the end",
        )
        # Every handled row is below the committed offsets: only the one above stays.
        wait_until(lambda: inbox_count(postgres_url, group) == 1, 30, "the rows cleaned up")
    assert len(handled) == 40
    with psycopg.connect(postgres_url) as db:
        rows = db.execute(
            'select group_id, partition, "offset" from kafkaworker_inbox order by 1'
        ).fetchall()
    assert rows == [(group, 0, 1000), ("other", 0, 1)]


def test_rows_younger_than_cleanup_after_stay(
    kafka_bootstrap: str, new_topic: TopicFactory, postgres_url: str
) -> None:
    topic = new_topic(1)
    group = f"g-{topic}"
    produce(kafka_bootstrap, topic, [b"%d" % i for i in range(10)])
    app = App("svc")
    inbox = PostgresInbox(postgres_url, cleanup_every=0.1, cleanup_after=3600)
    handled: list[int] = []
    app.handler(topic, group=group, inbox=inbox, codec="raw")(
        lambda msg: handled.append(msg.offset)
    )
    PostgresInbox(postgres_url).open(
        app.handlers["<lambda>"], group=group, metrics=Metrics()
    ).close()
    with psycopg.connect(postgres_url) as db:
        # Offset 0 handled two hours ago (its message is finished uncalled): old enough.
        db.execute(
            'insert into kafkaworker_inbox (group_id, topic, partition, "offset", handled_at) '
            "values (%s, %s, 0, 0, now() - interval '2 hours')",
            (group, topic),
        )
    with running(app, make_settings(kafka_bootstrap)):
        wait_until(
            lambda: (
                committed(kafka_bootstrap, group, topic, 1)
                == end_offsets(kafka_bootstrap, topic, 1)
            ),
            60,
            "offsets committed to the end",
        )
        # The old row goes (so the cleanup ran), the nine just handled stay.
        wait_until(lambda: inbox_count(postgres_url, group) == 9, 30, "the old row cleaned up")
    assert handled == list(range(1, 10))
    assert inbox_count(postgres_url, group) == 9

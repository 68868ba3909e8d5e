"""The inbox with a real broker, in-process (`kafkaworker run`'s Runner): the background
cleanup deletes the rows below the group's committed offsets, and only those."""

from __future__ import annotations

import orjson
import psycopg
import pytest
from click.testing import CliRunner

from kafkaworker import App, BatchPolicy, Message
from kafkaworker.cli import cli
from kafkaworker.observability.metrics import Metrics
from kafkaworker.postgres import PostgresInbox
from tests.conftest import TopicFactory
from tests.inbox_support import committed_to_the_end
from tests.support import committed, make_settings, produce, running, wait_until

pytestmark = pytest.mark.kafka


def inbox_count(url: str, group: str) -> int:
    with psycopg.connect(url) as db:
        row = db.execute(
            "select count(*) from kafkaworker_inbox where group_id = %s", (group,)
        ).fetchone()
    return int(row[0]) if row else 0


def back_to_the_start(
    monkeypatch: pytest.MonkeyPatch, bootstrap: str, group: str, topic: str
) -> None:
    """`kafkaworker offsets reset --to-earliest`: the group's messages come again, as after a
    crash before any commit."""
    monkeypatch.setenv("KAFKAWORKER_KAFKA__BOOTSTRAP_SERVERS", bootstrap)
    monkeypatch.delenv("KAFKAWORKER_SETTINGS", raising=False)
    moved = CliRunner().invoke(
        cli, ["offsets", "reset", group, "--topic", topic, "--to-earliest", "--execute"]
    )
    assert moved.exit_code == 0, moved.output


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
        committed_to_the_end(kafka_bootstrap, group, topic, 2, 60)
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
        committed_to_the_end(kafka_bootstrap, group, topic, 1, 60)
        # The old row goes (so the cleanup ran), the nine just handled stay.
        wait_until(lambda: inbox_count(postgres_url, group) == 9, 30, "the old row cleaned up")
    assert handled == list(range(1, 10))
    assert inbox_count(postgres_url, group) == 9


def test_offsets_reset_tells_of_the_inbox_rows_above_it_and_forgets_them_when_asked(
    kafka_bootstrap: str,
    new_topic: TopicFactory,
    postgres_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A reset back over handled messages: the inbox still holds their rows (younger than
    cleanup_after), so a replay finishes them uncalled, and `offsets reset` says how many;
    with --forget-inbox they are deleted and run again."""
    topic = new_topic(1)
    group = f"g-{topic}"
    produce(kafka_bootstrap, topic, [b"%d" % i for i in range(10)])
    handled: list[int] = []
    app = App("svc")

    @app.handler(topic, group=group, inbox=PostgresInbox(postgres_url), codec="raw")
    def handle(msg: Message[bytes], db: psycopg.Connection) -> None:
        db.execute("select 1")
        handled.append(msg.offset)

    settings = make_settings(kafka_bootstrap)

    def run_to_end() -> None:
        with running(app, settings):
            wait_until(
                lambda: committed(kafka_bootstrap, group, topic, 1) == {0: 10},
                60,
                "offsets committed to the end",
            )

    def reset(*args: str) -> dict[str, object]:
        result = CliRunner().invoke(
            cli, ["offsets", "reset", group, "--topic", topic, *args, "--json"]
        )
        assert result.exit_code == 0, result.output
        return orjson.loads(result.output)  # type: ignore[no-any-return]

    monkeypatch.setenv("KAFKAWORKER_KAFKA__BOOTSTRAP_SERVERS", kafka_bootstrap)
    monkeypatch.setenv("KAFKAWORKER_POSTGRES__URL", postgres_url)
    monkeypatch.delenv("KAFKAWORKER_SETTINGS", raising=False)
    run_to_end()
    assert handled == list(range(10))

    # Back to 7 without forgetting: said in the dry run and the execution, and the replay of
    # 7-9 calls nothing (the inbox has their rows).
    dry = reset("--to-offset", "7")
    assert dry["inbox"] == {
        "table": "kafkaworker_inbox",
        "rows": 3,
        "per_partition": {"0": 3},
        "forgotten": 0,
    }
    assert any("finishes those messages without calling" in str(n) for n in dry["notes"])  # type: ignore[union-attr]
    text = CliRunner().invoke(
        cli, ["offsets", "reset", group, "--topic", topic, "--to-offset", "7"]
    )
    assert "note: inbox: 3 row(s) at or above the new positions in kafkaworker_inbox" in text.output
    assert reset("--to-offset", "7", "--execute")["executed"] is True
    run_to_end()
    assert handled == list(range(10))

    # Back to 4, forgetting: 4-9 run again.
    moved = reset("--to-offset", "4", "--execute", "--forget-inbox")
    assert moved["inbox"] == {"table": "kafkaworker_inbox", "rows": 0, "forgotten": 6}
    run_to_end()
    assert handled == list(range(10)) + list(range(4, 10))

    # Asked for without a database: one line, nothing moved.
    monkeypatch.delenv("KAFKAWORKER_POSTGRES__URL")
    refused = CliRunner().invoke(
        cli, ["offsets", "reset", group, "--topic", topic, "--to-offset", "0", "--forget-inbox"]
    )
    assert refused.exit_code == 1
    assert "postgres.url is not set" in refused.output
    assert committed(kafka_bootstrap, group, topic, 1) == {0: 10}


def test_a_retry_topic_copy_and_its_original_are_one_message_to_the_inbox(
    kafka_bootstrap: str,
    new_topic: TopicFactory,
    postgres_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A message that failed (rolled back) and succeeded from its retry topic is recorded
    under its original's coordinates too: its original delivered again (here: the group moved
    back to the start, as a crash before the commit would) is a duplicate, not a second
    ledger row and another copy."""
    topic = new_topic(1)
    group = f"g-{topic}"
    produce(kafka_bootstrap, topic, [b"%d" % i for i in range(10)])
    with psycopg.connect(postgres_url) as db:
        db.execute("create table ledger (value integer not null)")
    calls: list[tuple[str, int]] = []
    app = App("svc")

    @app.handler(
        topic, group=group, inbox=PostgresInbox(postgres_url), retry_topics=[0.2], codec="raw"
    )
    def handle(msg: Message[bytes], db: psycopg.Connection) -> None:
        calls.append((msg.topic, int(msg.value)))
        db.execute("insert into ledger (value) values (%s)", (int(msg.value),))
        if msg.value == b"3" and msg.topic == topic:
            raise TimeoutError("the ledger service timed out")  # after its insert: rolled back

    def ledger() -> list[int]:
        with psycopg.connect(postgres_url) as db:
            return sorted(row[0] for row in db.execute("select value from ledger"))

    settings = make_settings(kafka_bootstrap)
    with running(app, settings):
        wait_until(lambda: ledger() == list(range(10)), 60, "every value in the ledger once")
        wait_until(lambda: committed(kafka_bootstrap, group, topic, 1) == {0: 10}, 30, "the commit")
    assert (f"{topic}.retry.0.2s", 3) in calls

    back_to_the_start(monkeypatch, kafka_bootstrap, group, topic)
    calls.clear()
    with running(app, settings):
        wait_until(lambda: committed(kafka_bootstrap, group, topic, 1) == {0: 10}, 60, "the replay")
    assert calls == []  # all ten recorded: 3 by its copy's row of its original
    assert ledger() == list(range(10))


def test_a_batch_handler_commits_each_batch_with_its_records_and_a_replay_calls_nothing(
    kafka_bootstrap: str,
    new_topic: TopicFactory,
    postgres_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A batch handler with an inbox on a real broker: a batch that fails after its inserts
    rolls them back with its records and runs again; every message is in the ledger once; the
    group moved back to the start (as a crash before the commits would), the replay finds the
    whole batches recorded and never calls the handler, and counts each message."""
    topic = new_topic(3)
    group = f"g-{topic}"
    total = 60
    produce(kafka_bootstrap, topic, [b"%d" % i for i in range(total)])
    with psycopg.connect(postgres_url) as db:
        db.execute("create table ledger (value integer not null)")
    calls: list[list[int]] = []
    app = App("svc")

    @app.handler(
        topic,
        group=group,
        inbox=PostgresInbox(postgres_url),
        batch=BatchPolicy(max_size=8, max_wait=0.1),
        retries=2,
        codec="raw",
    )
    def store(msgs: list[Message[bytes]], db: psycopg.Connection) -> None:
        values = [int(m.value) for m in msgs]
        calls.append(values)
        with db.cursor() as cursor:
            cursor.executemany("insert into ledger (value) values (%s)", [(v,) for v in values])
        if 7 in values and sum(7 in c for c in calls) == 1:
            raise TimeoutError("the ledger service timed out")  # after the inserts

    def ledger() -> list[int]:
        with psycopg.connect(postgres_url) as db:
            return sorted(row[0] for row in db.execute("select value from ledger"))

    settings = make_settings(kafka_bootstrap)
    with running(app, settings):
        wait_until(lambda: ledger() == list(range(total)), 60, "every value in the ledger once")
        committed_to_the_end(kafka_bootstrap, group, topic, 3, 30)
    assert sum(7 in c for c in calls) == 2  # the failed batch ran again
    assert inbox_count(postgres_url, group) == total

    back_to_the_start(monkeypatch, kafka_bootstrap, group, topic)
    calls.clear()
    with running(app, settings) as runner:
        committed_to_the_end(kafka_bootstrap, group, topic, 3, 60)
        replayed = runner.metrics.deduplicated.labels("store")._value.get()
    assert calls == []
    assert replayed == total
    assert ledger() == list(range(total))

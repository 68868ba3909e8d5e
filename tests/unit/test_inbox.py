"""The PostgreSQL inbox (kafkaworker.postgres) against a real PostgreSQL server (the session's,
tests/conftest.py), with the in-memory source for the runtime: declaration refusals, the
transaction around each call, rollback on error, the duplicates' two guards, and one-line
start-up errors."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from kafkaworker import App, Backoff, BatchFailures, BatchPolicy, Message
from kafkaworker.errors import ConfigError, DatabaseUnavailable, StartupError
from kafkaworker.observability.metrics import Metrics
from kafkaworker.postgres import TABLE, PostgresInbox, PostgresInboxCalls
from kafkaworker.runtime.failures.policy import Action, FailurePolicy
from kafkaworker.runtime.poll.partitions import PartitionState
from kafkaworker.runtime.source import Partition
from kafkaworker.runtime.source.memory import MemorySource
from kafkaworker.testing.jvm import free_port
from kafkaworker.testing.postgres import PostgresServer
from tests.support import wait_until
from tests.unit.runtime_support import committed_to_the_end, messages, running, spec_for

LEDGER = 'create table ledger (topic text, partition int, "offset" bigint, value text)'


def ledger_rows(url: str) -> list[tuple[int, int]]:
    with psycopg.connect(url) as db:
        rows = db.execute('select partition, "offset" from ledger order by 1, 2').fetchall()
    return [(int(p), int(o)) for p, o in rows]


def inbox_rows(url: str, group: str = "svc") -> list[tuple[str, int, int]]:
    with psycopg.connect(url) as db:
        rows = db.execute(
            'select topic, partition, "offset" from kafkaworker_inbox where group_id = %s '
            "order by 1, 2, 3",
            (group,),
        ).fetchall()
    return [(str(t), int(p), int(o)) for t, p, o in rows]


def deduplicated(metrics: Metrics, handler: str = "handler") -> float:
    return float(metrics.deduplicated.labels(handler)._value.get())


@pytest.fixture
def ledger_url(postgres_url: str) -> str:
    with psycopg.connect(postgres_url) as db:
        db.execute(LEDGER)
    return postgres_url


def write_ledger(msg: Message[bytes], db: psycopg.Connection) -> None:
    db.execute(
        'insert into ledger (topic, partition, "offset", value) values (%s, %s, %s, %s)',
        (msg.topic, msg.partition, msg.offset, msg.value.decode()),
    )


# -- declaration --------------------------------------------------------------------------


INBOX = PostgresInbox("postgresql://app:s3cret@db.example:5433/shop")


def test_the_url_password_never_shows() -> None:
    assert "s3cret" not in repr(INBOX)
    assert repr(INBOX) == "PostgresInbox(db.example:5433, database shop, table=kafkaworker_inbox)"
    with pytest.raises(ConfigError) as bad:
        PostgresInbox("postgresql://app:s3cret@db/shop?nonsense=1")
    assert "s3cret" not in str(bad.value)
    with pytest.raises(ConfigError, match="unquoted identifier"):
        PostgresInbox("postgresql://db/shop", table="inbox; drop table x")


def test_a_connection_parameter_is_found_and_gets_the_connection() -> None:
    spec = spec_for(write_ledger, inbox=INBOX)
    assert spec.connection == "db"
    assert spec_for(plain, inbox=INBOX).connection is None  # the inbox without a connection
    # Unannotated, a second parameter is not the connection: refused as before.
    with pytest.raises(ConfigError, match="exactly one argument"):
        spec_for(lambda msg, db: None, inbox=INBOX)


async def async_blocking(msg: Message[bytes], db: psycopg.Connection) -> None:
    del msg, db


def sync_with_async(msg: Message[bytes], db: psycopg.AsyncConnection) -> None:
    del msg, db


def plain(msg: Message[bytes]) -> None:
    del msg


@pytest.mark.parametrize(
    ("func", "options", "refused"),
    [
        (write_ledger, {}, "a psycopg connection parameter needs an inbox"),
        (async_blocking, {"inbox": INBOX}, "takes a psycopg.AsyncConnection"),
        (sync_with_async, {"inbox": INBOX}, "a def handler takes a psycopg.Connection"),
        (plain, {"inbox": INBOX, "mode": "queue"}, "queue mode"),
        (plain, {"inbox": INBOX, "ack": "manual"}, "the work the ack waited for"),
        (plain, {"inbox": INBOX, "output": "out"}, "outputs"),
        (plain, {"inbox": "postgresql://db/shop"}, "PostgresInbox"),
    ],
)
def test_what_the_inbox_does_not_support_yet_is_refused_in_one_line(
    func: Any, options: dict[str, Any], refused: str
) -> None:
    with pytest.raises(ConfigError) as error:
        spec_for(func, **options)
    assert refused in str(error.value)
    assert "\n" not in str(error.value)
    assert "s3cret" not in str(error.value)


async def write_ledger_async(msg: Message[bytes], db: psycopg.AsyncConnection) -> None:
    await db.execute(
        'insert into ledger (topic, partition, "offset", value) values (%s, %s, %s, %s)',
        (msg.topic, msg.partition, msg.offset, msg.value.decode()),
    )


def test_an_async_handler_gets_an_async_connection() -> None:
    spec = spec_for(write_ledger_async, inbox=INBOX)
    assert spec.connection == "db" and spec.is_async


def test_manual_ack_with_an_inbox_is_refused_saying_why() -> None:
    with pytest.raises(ConfigError) as refused:
        spec_for(plain, inbox=INBOX, ack="manual")
    line = str(refused.value)
    assert "finished without the work the ack waited for" in line and "\n" not in line
    assert "cannot have an inbox yet" not in line  # not a gap to fill: unsound as it stands


def test_the_database_being_unavailable_is_retried_in_place_whatever_retries_says() -> None:
    spec = spec_for(plain, inbox=INBOX, retries=0, dlq="dlq")
    policy = FailurePolicy(spec, can_publish=True)
    decision = policy.decide("t", DatabaseUnavailable("down"), failures=50)
    assert decision.action is Action.RETRY
    assert policy.decide("t", ValueError("bad"), failures=1).action is Action.DEAD_LETTER


# -- start-up --------------------------------------------------------------------------------


def test_an_unreachable_database_is_one_start_up_line_without_the_password() -> None:
    inbox = PostgresInbox(f"postgresql://app:s3cret@127.0.0.1:{free_port()}/shop")
    with pytest.raises(StartupError) as error:
        inbox.open(spec_for(plain, inbox=inbox), group="svc", metrics=Metrics())
    line = str(error.value)
    assert "127.0.0.1" in line and "database shop" in line, line
    assert "s3cret" not in line and "\n" not in line


def test_the_inbox_table_is_created_at_start_up_once(postgres_url: str) -> None:
    inbox = PostgresInbox(postgres_url)
    spec = spec_for(plain, inbox=inbox, concurrency=2)
    opened = [inbox.open(spec, group="svc", metrics=Metrics()) for _ in range(2)]
    for calls in opened:
        calls.close()
    with psycopg.connect(postgres_url) as db:
        columns = db.execute(
            "select column_name from information_schema.columns "
            "where table_name = 'kafkaworker_inbox' order by ordinal_position"
        ).fetchall()
    assert [c for (c,) in columns] == ["group_id", "topic", "partition", "offset", "handled_at"]


# -- the runtime -----------------------------------------------------------------------------


def test_each_message_is_handled_in_a_transaction_that_records_it(ledger_url: str) -> None:
    spec = spec_for(write_ledger, inbox=PostgresInbox(ledger_url), ordering="key", concurrency=4)
    source = MemorySource({"t": 2})
    for i in range(40):
        source.broker.append("t", b"%d" % i, key=b"k%d" % (i % 5), partition=i % 2)
    with running(spec, source) as handler:
        partitions = [Partition("t", 0), Partition("t", 1)]
        assert source.wait_for(lambda s: committed_to_the_end(s, partitions), 30)
        del handler
    expected = [(p, o) for p in (0, 1) for o in range(20)]
    assert ledger_rows(ledger_url) == expected
    assert inbox_rows(ledger_url) == [("t", p, o) for p, o in expected]


def test_an_error_rolls_the_handlers_writes_back_with_the_record(ledger_url: str) -> None:
    attempts: list[int] = []

    def fails_once(msg: Message[bytes], db: psycopg.Connection) -> None:
        write_ledger(msg, db)
        attempts.append(msg.offset)
        if attempts.count(msg.offset) == 1:
            raise RuntimeError("after the write")

    spec = spec_for(fails_once, inbox=PostgresInbox(ledger_url), retries=1)
    source = MemorySource({"t": 1})
    for i in range(5):
        source.broker.append("t", b"%d" % i)
    with running(spec, source):
        assert source.wait_for(lambda s: committed_to_the_end(s, [Partition("t", 0)]), 30)
    assert sorted(attempts) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    # Once each: the first attempt's row went with its rollback.
    assert ledger_rows(ledger_url) == [(0, o) for o in range(5)]


def test_a_skipped_failure_leaves_neither_the_write_nor_the_record(ledger_url: str) -> None:
    def fails(msg: Message[bytes], db: psycopg.Connection) -> None:
        write_ledger(msg, db)
        if msg.offset == 1:
            raise RuntimeError("no")

    spec = spec_for(fails, inbox=PostgresInbox(ledger_url), on_exhausted="skip")
    source = MemorySource({"t": 1})
    for i in range(3):
        source.broker.append("t", b"%d" % i)
    with running(spec, source):
        assert source.wait_for(lambda s: committed_to_the_end(s, [Partition("t", 0)]), 30)
    assert ledger_rows(ledger_url) == [(0, 0), (0, 2)]
    assert inbox_rows(ledger_url) == [("t", 0, 0), ("t", 0, 2)]


@pytest.mark.parametrize("call", ["commit", "rollback"])
def test_the_handler_cannot_end_the_inbox_transaction_itself(ledger_url: str, call: str) -> None:
    # Committed half way, the write would stay without the record (or the record without
    # the write): psycopg refuses both inside the runtime's transaction block.
    errors: list[BaseException] = []

    def ends_it(msg: Message[bytes], db: psycopg.Connection) -> None:
        write_ledger(msg, db)
        try:
            getattr(db, call)()
        except psycopg.ProgrammingError as exc:
            errors.append(exc)
            raise

    spec = spec_for(ends_it, inbox=PostgresInbox(ledger_url), on_exhausted="skip")
    source = MemorySource({"t": 1})
    for i in range(3):
        source.broker.append("t", b"%d" % i)
    with running(spec, source):
        assert source.wait_for(lambda s: committed_to_the_end(s, [Partition("t", 0)]), 30)
    assert len(errors) == 3
    assert all(
        f"Explicit {call}() forbidden within a Transaction context" in str(e) for e in errors
    )
    assert ledger_rows(ledger_url) == []
    assert inbox_rows(ledger_url) == []


def test_recorded_messages_are_finished_without_a_call_and_counted(ledger_url: str) -> None:
    with psycopg.connect(ledger_url) as db:
        PostgresInbox(ledger_url).open(
            spec_for(plain, inbox=PostgresInbox(ledger_url), concurrency=1),
            group="svc",
            metrics=Metrics(),
        ).close()
        # Handled before a crash, committed in the database but not in Kafka.
        for offset in (1, 2, 5):
            db.execute(
                'insert into kafkaworker_inbox (group_id, topic, partition, "offset") '
                "values ('svc', 't', 0, %s)",
                (offset,),
            )
            db.execute("insert into ledger values ('t', 0, %s, 'before')", (offset,))
    called: list[int] = []

    def handler(msg: Message[bytes], db: psycopg.Connection) -> None:
        called.append(msg.offset)
        write_ledger(msg, db)

    metrics = Metrics()
    spec = spec_for(handler, inbox=PostgresInbox(ledger_url), ordering="key", concurrency=3)
    source = MemorySource({"t": 1})
    for i in range(8):
        source.broker.append("t", b"%d" % i, key=b"k%d" % (i % 3))
    from kafkaworker.runtime.compose import AppRuntime, GivenSources  # noqa: PLC0415
    from tests.unit.runtime_support import settings  # noqa: PLC0415

    runtime = AppRuntime(
        App("svc"), settings(), [spec], sources=GivenSources({"handler": source}), metrics=metrics
    )
    with runtime:
        runtime.start()
        assert source.wait_for(lambda s: committed_to_the_end(s, [Partition("t", 0)]), 30)
    assert sorted(called) == [0, 3, 4, 6, 7]
    assert ledger_rows(ledger_url) == [(0, o) for o in range(8)]
    assert deduplicated(metrics) == 3


# -- the two guards, one call at a time ------------------------------------------------------


class CountingCalls:
    """A handler's PostgresInboxCalls, with its statements on the inbox table counted."""

    def __init__(self, url: str, *, concurrency: int = 2) -> None:
        self.metrics = Metrics()
        spec = spec_for(write_ledger, inbox=PostgresInbox(url), concurrency=concurrency)
        self.calls: PostgresInboxCalls = PostgresInbox(url).open(
            spec, group="svc", metrics=self.metrics
        )
        self.call = self.calls.wrap(spec.call_with_connection())

    def close(self) -> None:
        self.calls.close()


@pytest.fixture
def counting(ledger_url: str) -> Iterator[CountingCalls]:
    calls = CountingCalls(ledger_url)
    yield calls
    calls.close()


def test_one_look_up_per_assignment_not_per_message(
    ledger_url: str, counting: CountingCalls
) -> None:
    state = PartitionState("t", 0)
    run = messages(state, 50)
    for msg in run[10:]:
        counting.call(msg)  # a lane that starts at 10: looks up from 10
    for msg in run[:10]:
        counting.call(msg)  # one that starts lower: looks up [0, 10) once
    assert counting.calls.lookups == 2
    with psycopg.connect(ledger_url) as db:
        (count,) = db.execute("select count(*) from kafkaworker_inbox").fetchone() or (0,)
    assert count == 50
    again = PartitionState("t", 0, generation=1)  # assigned again: a new lease
    state.lease.revoked = True
    replay = messages(again, 50)
    # Inserts into the inbox wait while this lock is held (reads do not): the replay finishes
    # only if the look-up alone finished it, with no transaction per message.
    with psycopg.connect(ledger_url) as locker, locker.transaction():
        locker.execute("lock table kafkaworker_inbox in exclusive mode")
        replayed = threading.Thread(target=lambda: [counting.call(msg) for msg in replay])
        replayed.start()
        replayed.join(20)
        finished_under_the_lock = not replayed.is_alive()
    replayed.join(30)
    assert finished_under_the_lock
    assert deduplicated(counting.metrics) == 50
    assert ledger_rows(ledger_url) == [(0, o) for o in range(50)]
    assert counting.calls.lookups == 3  # the whole replay: one


def test_the_insert_guard_waits_for_a_member_still_running_the_message(
    ledger_url: str, counting: CountingCalls
) -> None:
    """A frozen member (its partitions moved) still runs a message that the new owner gets
    too: the look-up cannot see its uncommitted record, but the new owner's insert waits for
    it and then finds the conflict."""
    inside, release = threading.Event(), threading.Event()
    old = CountingCalls(ledger_url)

    def slow(msg: Any, db: psycopg.Connection) -> None:
        write_ledger(msg, db)
        inside.set()
        assert release.wait(30)

    old_call = old.calls.wrap(slow)
    [msg_old] = messages(PartitionState("t", 0), 1)
    [msg_new] = messages(PartitionState("t", 0, generation=1), 1)
    frozen = threading.Thread(target=old_call, args=(msg_old,))
    frozen.start()
    try:
        assert inside.wait(30)
        done = threading.Event()
        new_owner = threading.Thread(target=lambda: (counting.call(msg_new), done.set()))
        new_owner.start()

        def waiting_on_a_lock() -> bool:
            with psycopg.connect(ledger_url) as db:
                row = db.execute(
                    "select count(*) from pg_stat_activity where wait_event_type = 'Lock' "
                    "and datname = current_database()"
                ).fetchone()
            return bool(row and row[0])

        wait_until(waiting_on_a_lock, 30, "the new owner's insert waiting for the old one")
        assert not done.is_set()
        release.set()
        assert done.wait(30)
        new_owner.join(30)
    finally:
        release.set()
        frozen.join(30)
        old.close()
    assert ledger_rows(ledger_url) == [(0, 0)]
    assert deduplicated(counting.metrics) == 1


def test_a_dropped_connection_is_the_database_unavailable(
    ledger_url: str, counting: CountingCalls
) -> None:
    state = PartitionState("t", 0)
    [first, second] = messages(state, 2)
    counting.call(first)
    with psycopg.connect(ledger_url) as db:
        db.execute(
            "select pg_terminate_backend(pid) from pg_stat_activity "
            "where datname = current_database() and pid <> pg_backend_pid()"
        )
    # The pool's connections are gone; each call of the message fails as the database's
    # (retried in place), until the pool has replaced them.
    failures = 0
    while True:
        try:
            counting.call(second)
            break
        except DatabaseUnavailable as exc:
            assert "\n" not in str(exc)
            failures += 1
            assert failures < 10
    assert failures >= 1
    assert ledger_rows(ledger_url) == [(0, 0), (0, 1)]


def test_the_handlers_own_sql_error_is_its_failure_not_the_databases(
    ledger_url: str,
) -> None:
    spec = spec_for(write_ledger, inbox=PostgresInbox(ledger_url), concurrency=1)
    calls = PostgresInbox(ledger_url).open(spec, group="svc", metrics=Metrics())
    try:
        call = calls.wrap(lambda msg, db: db.execute("select * from no_such_table"))
        [msg] = messages(PartitionState("t", 0), 1)
        with pytest.raises(psycopg.errors.UndefinedTable):
            call(msg)
        assert inbox_rows(ledger_url) == []  # rolled back with it
    finally:
        calls.close()


def test_postgresql_killed_and_restarted_mid_stream_loses_and_doubles_nothing() -> None:
    """The server killed (SIGKILL) with the worker running, then restarted on its data: the
    messages that met it down wait (DatabaseUnavailable, retried in place although retries=0
    and on_exhausted="skip" would skip a failing message), and run once it is back."""
    server = PostgresServer().start()
    try:
        url = server.url
        with psycopg.connect(url) as db:
            db.execute(LEDGER)
        metrics = Metrics()
        spec = spec_for(
            write_ledger,
            inbox=PostgresInbox(url),
            ordering="key",
            concurrency=3,
            retries=0,
            on_exhausted="skip",
            backoff=Backoff(initial=0.05, max=0.2),
        )
        source = MemorySource({"t": 1})
        partition = [Partition("t", 0)]
        from kafkaworker.runtime.compose import AppRuntime, GivenSources  # noqa: PLC0415
        from tests.unit.runtime_support import settings  # noqa: PLC0415

        runtime = AppRuntime(
            App("svc"),
            settings(),
            [spec],
            sources=GivenSources({"handler": source}),
            metrics=metrics,
        )
        failures = metrics.handler_failures.labels("handler")
        with runtime:
            runtime.start()
            for i in range(20):
                source.broker.append("t", b"%d" % i, key=b"k%d" % (i % 4))
            assert source.wait_for(lambda s: committed_to_the_end(s, partition), 30)
            server.kill()
            for i in range(20, 40):
                source.broker.append("t", b"%d" % i, key=b"k%d" % (i % 4))
            wait_until(lambda: failures._value.get() >= 3, 30, "calls failing on the database")
            server.start()
            assert source.wait_for(lambda s: committed_to_the_end(s, partition), 60)
        assert ledger_rows(url) == [(0, o) for o in range(40)]
        assert metrics.skipped.labels("handler")._value.get() == 0
    finally:
        server.cleanup()


# -- the TestClient ---------------------------------------------------------------------------


def test_the_test_client_runs_an_inbox_handler_in_the_given_database(ledger_url: str) -> None:
    from kafkaworker.testing import TestClient  # noqa: PLC0415

    app = App("svc")
    calls: list[int] = []

    @app.handler("t", inbox=PostgresInbox(ledger_url), codec="raw", retries=2)
    def handle(msg: Message[bytes], db: psycopg.Connection) -> None:
        calls.append(msg.offset)
        write_ledger(msg, db)
        if msg.value == b"flaky" and calls.count(msg.offset) == 1:
            raise RuntimeError("rolled back, then retried")

    with TestClient(app) as client:
        assert client.send("t", raw_value=b"one").outcome == "finished"
        flaky = client.send("t", raw_value=b"flaky")
        assert (flaky.outcome, flaky.attempts) == ("finished", 2)
    assert ledger_rows(ledger_url) == [(0, 0), (0, 1)]
    assert inbox_rows(ledger_url) == [("t", 0, 0), ("t", 0, 1)]


def test_the_test_client_runs_a_batch_handler_with_an_inbox(ledger_url: str) -> None:
    from kafkaworker.testing import TestClient  # noqa: PLC0415

    record_by_hand(ledger_url, [1])  # offset 1 handled before: finished, not passed
    app = App("svc")
    batches: list[list[int]] = []

    @app.handler("t", inbox=PostgresInbox(ledger_url), codec="raw", batch=BatchPolicy(10, 0))
    def store(msgs: list[Message[bytes]], db: psycopg.Connection) -> None:
        batches.append([m.offset for m in msgs])
        for msg in msgs:
            write_ledger(msg, db)

    with TestClient(app) as client:
        outcomes = [client.send("t", raw_value=b"%d" % i).outcome for i in range(3)]
    assert outcomes == ["finished"] * 3
    assert batches == [[0], [2]]  # the recorded one never reached the handler
    assert ledger_rows(ledger_url) == [(0, 0), (0, 1), (0, 2)]


def test_the_test_client_without_a_database_is_one_line() -> None:
    from kafkaworker.testing import TestClient  # noqa: PLC0415

    app = App("svc")
    url = f"postgresql://app:s3cret@127.0.0.1:{free_port()}/shop"
    app.handler("t", inbox=PostgresInbox(url), codec="raw")(write_ledger)
    with pytest.raises(StartupError) as error, TestClient(app):
        pass
    assert "database shop" in str(error.value) and "s3cret" not in str(error.value)
    assert "\n" not in str(error.value)


# -- async def handlers ------------------------------------------------------------------------


def test_an_async_handler_runs_in_a_transaction_on_the_loop_and_skips_what_is_recorded(
    ledger_url: str,
) -> None:
    from kafkaworker.runtime.compose import AppRuntime, GivenSources  # noqa: PLC0415
    from tests.unit.runtime_support import settings  # noqa: PLC0415

    inbox = PostgresInbox(ledger_url)
    inbox.open(spec_for(plain, inbox=inbox, concurrency=1), group="svc", metrics=Metrics()).close()
    with psycopg.connect(ledger_url) as db:
        for offset in (3, 4):  # handled before a crash
            db.execute(
                'insert into kafkaworker_inbox (group_id, topic, partition, "offset") '
                "values ('svc', 't', 1, %s)",
                (offset,),
            )
            db.execute("insert into ledger values ('t', 1, %s, 'before')", (offset,))
    attempts: list[tuple[int, int]] = []

    async def handler(msg: Message[bytes], db: psycopg.AsyncConnection) -> None:
        attempts.append((msg.partition, msg.offset))
        await write_ledger_async(msg, db)
        if msg.offset == 7 and attempts.count((msg.partition, 7)) == 1:
            raise RuntimeError("rolled back, then retried")

    metrics = Metrics()
    spec = spec_for(
        handler,
        inbox=inbox,
        ordering="key",
        concurrency=4,
        retries=1,
        backoff=Backoff(initial=0.01, max=0.01),
    )
    source = MemorySource({"t": 2})
    for i in range(24):
        source.broker.append("t", b"%d" % i, key=b"k%d" % (i % 3), partition=i % 2)
    runtime = AppRuntime(
        App("svc"), settings(), [spec], sources=GivenSources({"handler": source}), metrics=metrics
    )
    partitions = [Partition("t", 0), Partition("t", 1)]
    with runtime:
        runtime.start()
        assert source.wait_for(lambda s: committed_to_the_end(s, partitions), 30)
    assert ledger_rows(ledger_url) == [(p, o) for p in (0, 1) for o in range(12)]
    assert (1, 3) not in attempts and (1, 4) not in attempts
    assert attempts.count((0, 7)) == 2 and attempts.count((1, 7)) == 2
    assert deduplicated(metrics) == 2


# -- the URL from the settings ----------------------------------------------------------------


def test_an_inbox_without_a_url_takes_postgres_url_from_the_settings(ledger_url: str) -> None:
    from kafkaworker.runtime.compose import AppRuntime, GivenSources  # noqa: PLC0415
    from tests.unit.runtime_support import settings  # noqa: PLC0415

    spec = spec_for(write_ledger, inbox=PostgresInbox())
    assert (
        repr(spec.inbox) == "PostgresInbox(postgres.url of the settings, table=kafkaworker_inbox)"
    )
    source = MemorySource({"t": 1})
    source.broker.append("t", b"0")
    configured = settings(postgres={"url": ledger_url})
    assert ledger_url not in repr(configured)  # a secret: it may hold a password
    runtime = AppRuntime(App("svc"), configured, [spec], sources=GivenSources({"handler": source}))
    with runtime:
        runtime.start()
        assert source.wait_for(lambda s: committed_to_the_end(s, [Partition("t", 0)]), 30)
    assert ledger_rows(ledger_url) == [(0, 0)]


def test_an_inbox_without_any_url_is_one_start_up_line() -> None:
    from kafkaworker.runtime.compose import AppRuntime, GivenSources  # noqa: PLC0415
    from tests.unit.runtime_support import settings  # noqa: PLC0415

    spec = spec_for(write_ledger, inbox=PostgresInbox())
    runtime = AppRuntime(
        App("svc"), settings(), [spec], sources=GivenSources({"handler": MemorySource({"t": 1})})
    )
    with pytest.raises(StartupError, match="KAFKAWORKER_POSTGRES__URL") as error, runtime:
        pass
    assert "\n" not in str(error.value)
    bad = settings(postgres={"url": "postgresql://app:s3cret@db/shop?nonsense=1"})
    runtime = AppRuntime(
        App("svc"), bad, [spec], sources=GivenSources({"handler": MemorySource({"t": 1})})
    )
    with pytest.raises(StartupError, match=r"settings postgres\.url") as error, runtime:
        pass
    assert "s3cret" not in str(error.value)


def test_an_inbox_and_exactly_once_together_are_refused_in_one_line() -> None:
    app = App("both")
    with pytest.raises(ConfigError, match="cannot have an inbox yet") as refused:

        @app.handler(
            "t", inbox=PostgresInbox("postgresql://u@h/db"), processing_guarantee="exactly_once"
        )
        def handle(msg: Message[Any]) -> None: ...

    assert "\n" not in str(refused.value)


def test_the_reset_command_names_the_inbox_table_the_inbox_uses() -> None:
    from kafkaworker.ops.inbox import INBOX_TABLE  # noqa: PLC0415 - psycopg-free on purpose

    assert INBOX_TABLE == TABLE


# -- batch handlers: one transaction for the batch ------------------------------------------


def record_by_hand(url: str, offsets: list[int]) -> None:
    """Offsets of partition 0 of "t" handled before a crash: committed in the database (the
    inbox row and the ledger row), not in Kafka."""
    PostgresInbox(url).open(
        spec_for(plain, inbox=PostgresInbox(url), concurrency=1), group="svc", metrics=Metrics()
    ).close()
    with psycopg.connect(url) as db:
        for offset in offsets:
            db.execute(
                'insert into kafkaworker_inbox (group_id, topic, partition, "offset") '
                "values ('svc', 't', 0, %s)",
                (offset,),
            )
            db.execute("insert into ledger values ('t', 0, %s, 'before')", (offset,))


def run_batches(
    url: str,
    func: Any,
    count: int,
    *,
    headers: dict[int, list[tuple[str, bytes]]] | None = None,
    max_size: int = 4,
    **options: Any,
) -> Metrics:
    """`func` as a batch handler with an inbox over `count` messages of one partition (with
    `headers` by offset), run until every offset is committed; its metrics."""
    metrics = Metrics()
    spec = spec_for(func, inbox=PostgresInbox(url), batch=BatchPolicy(max_size=max_size), **options)
    source = MemorySource({"t": 1})
    for i in range(count):
        source.broker.append("t", b"%d" % i, headers=(headers or {}).get(i))
    from kafkaworker.runtime.compose import AppRuntime, GivenSources  # noqa: PLC0415
    from tests.unit.runtime_support import settings  # noqa: PLC0415

    runtime = AppRuntime(
        App("svc"), settings(), [spec], sources=GivenSources({"handler": source}), metrics=metrics
    )
    with runtime:
        runtime.start()
        assert source.wait_for(lambda s: committed_to_the_end(s, [Partition("t", 0)]), 30)
    return metrics


def test_a_batch_is_one_transaction_and_recorded_messages_are_not_passed(ledger_url: str) -> None:
    # 4-7: a whole batch recorded (no call); 1, 2, 9: some of a batch.
    record_by_hand(ledger_url, [1, 2, 4, 5, 6, 7, 9])
    batches: list[list[int]] = []
    transactions: set[int] = set()

    def store(msgs: list[Message[bytes]], db: psycopg.Connection) -> None:
        batches.append([m.offset for m in msgs])
        for msg in msgs:
            write_ledger(msg, db)
        (xid,) = db.execute("select txid_current()").fetchone() or (0,)
        transactions.add(int(xid))

    metrics = run_batches(ledger_url, store, 12)
    called = sorted(o for batch in batches for o in batch)
    assert called == [0, 3, 8, 10, 11]
    assert all(batch for batch in batches)  # never called with nothing
    assert len(transactions) == len(batches)  # one transaction per call
    assert ledger_rows(ledger_url) == [(0, o) for o in range(12)]
    assert inbox_rows(ledger_url) == [("t", 0, o) for o in range(12)]
    assert deduplicated(metrics) == 7


async def store_async(msgs: list[Message[bytes]], db: psycopg.AsyncConnection) -> None:
    for msg in msgs:
        await write_ledger_async(msg, db)


def test_an_async_batch_handler_gets_the_transaction_too(ledger_url: str) -> None:
    record_by_hand(ledger_url, [3, 4])
    metrics = run_batches(ledger_url, store_async, 10, concurrency=2)
    assert ledger_rows(ledger_url) == [(0, o) for o in range(10)]
    assert inbox_rows(ledger_url) == [("t", 0, o) for o in range(10)]
    assert deduplicated(metrics) == 2


def test_a_failed_batch_rolls_back_its_writes_and_its_records(ledger_url: str) -> None:
    calls: list[list[int]] = []

    def fails_once(msgs: list[Message[bytes]], db: psycopg.Connection) -> None:
        for msg in msgs:
            write_ledger(msg, db)
        calls.append([m.offset for m in msgs])
        if len(calls) == 1:
            raise RuntimeError("after the writes")

    run_batches(ledger_url, fails_once, 8, retries=1)
    assert calls[0] == calls[1]  # the batch ran again whole
    assert ledger_rows(ledger_url) == [(0, o) for o in range(8)]  # once each
    assert inbox_rows(ledger_url) == [("t", 0, o) for o in range(8)]


def test_batch_failures_commit_the_others_and_run_the_failed_again(ledger_url: str) -> None:
    failed_once: list[int] = []

    def partly(msgs: list[Message[bytes]], db: psycopg.Connection) -> None:
        failures: dict[Message[bytes], BaseException] = {}
        for msg in msgs:
            try:
                with db.transaction():  # a savepoint: a failed message's write goes with it
                    write_ledger(msg, db)
                    if msg.offset % 3 == 1 and msg.offset not in failed_once:
                        failed_once.append(msg.offset)
                        raise ValueError(f"{msg.offset} is not yet")
            except ValueError as error:
                failures[msg] = error
        if failures:
            raise BatchFailures(failures)

    run_batches(ledger_url, partly, 8, retries=1)
    assert failed_once == [1, 4, 7]
    assert ledger_rows(ledger_url) == [(0, o) for o in range(8)]
    assert inbox_rows(ledger_url) == [("t", 0, o) for o in range(8)]


def test_batch_failures_in_an_aborted_transaction_fail_the_whole_batch(ledger_url: str) -> None:
    seen: list[list[int]] = []

    def aborts(msgs: list[Message[bytes]], db: psycopg.Connection) -> None:
        seen.append([m.offset for m in msgs])
        for msg in msgs:
            write_ledger(msg, db)
        if len(seen) == 1:
            try:
                db.execute("select 1/0")  # aborts the transaction: nothing of it can commit
            except psycopg.errors.DivisionByZero as error:
                raise BatchFailures({msgs[0]: error}) from error

    run_batches(ledger_url, aborts, 4, retries=1)
    assert seen[0] == seen[1] == [0, 1, 2, 3]  # all of it ran again, not only msgs[0]
    assert ledger_rows(ledger_url) == [(0, o) for o in range(4)]


def test_an_outbox_record_published_twice_in_one_batch_is_applied_once(ledger_url: str) -> None:
    # The relay published outbox row 7 again (it died before marking it): offsets 1 and 4.
    again = [("kw.outbox.id", b"7")]
    called: list[int] = []

    def store(msgs: list[Message[bytes]], db: psycopg.Connection) -> None:
        called.extend(m.offset for m in msgs)
        for msg in msgs:
            write_ledger(msg, db)

    metrics = run_batches(ledger_url, store, 6, headers={1: again, 4: again}, max_size=8)
    assert sorted(called) == [0, 1, 2, 3, 5]
    assert deduplicated(metrics) == 1
    # Both offsets recorded, and the id once.
    assert inbox_rows(ledger_url) == [("t", -1, 7)] + [("t", 0, o) for o in range(6)]

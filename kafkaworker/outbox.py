"""The transactional outbox on PostgreSQL (psycopg 3): a record written in the caller's
database transaction, published to Kafka by a relay at least once, in order per key.

    outbox = PostgresOutbox("postgresql://app@db/shop")
    app.outbox(outbox)                                   # `kafkaworker run` runs its relay

    with psycopg.connect(DSN) as db:
        db.execute("update orders set state = 'paid' where id = %s", (9,))
        outbox.add(db, "orders.events", {"id": 9, "state": "paid"}, key="order-9")

The outbox table (created by the relay at start-up, or by the first `add` of a process, when
missing; see docs/outbox.md):

    id bigint identity primary key, topic text, key bytea, value bytea,
    header_names text[], header_values bytea[], created_at timestamptz,
    published_at timestamptz (null until the broker acknowledged the record)

The relay publishes unpublished rows in id order, each with the header `kw.outbox.id` (the
row's id, decimal), through an idempotent acks=all producer, and marks a batch's rows
published once their delivery reports came back. A crash between the acknowledgement and the
mark publishes them again with the same `kw.outbox.id`: an inbox downstream (PostgresInbox)
finishes such a repeat without handling it. One relay per table is active: the one holding a
session-level advisory lock on a connection of its own; the others try it every second and
take over once PostgreSQL ends the dead one's session. `add` notifies the relay (NOTIFY, sent
by PostgreSQL at commit); the relay also polls every `poll_interval` for rows written without.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypedDict, Unpack

import psycopg
import structlog
from psycopg import sql

from kafkaworker.errors import ConfigError, StartupError
from kafkaworker.observability.health import Health
from kafkaworker.owned_thread import OwnedThread
from kafkaworker.postgres_table import PostgresTable
from kafkaworker.postgres_table import one_line as _one_line
from kafkaworker.producer import _encode

if TYPE_CHECKING:
    import confluent_kafka

    from kafkaworker.observability.metrics import Metrics
    from kafkaworker.serialization import Codec
    from kafkaworker.settings import Settings

log = structlog.get_logger("kafkaworker.outbox")

__all__ = ["ID_HEADER", "OUTBOX_TABLE", "AddOptions", "OutboxRelay", "PostgresOutbox"]

OUTBOX_TABLE = "kafkaworker_outbox"
# The header of every published record: the outbox row's id, decimal ASCII. Stable across
# republications, so that a consumer deduplicates on it (PostgresInbox does).
ID_HEADER = "kw.outbox.id"
# How often a standby relay tries the lock: the take-over delay after the active one dies,
# at most this plus the time PostgreSQL takes to end a dead session (at once for a killed
# process: its socket closes).
LOCK_RETRY = 1.0
# How long a batch may wait for its acknowledgements: the producer's delivery.timeout.ms
# (30 s, producer_config) plus a margin.
FLUSH_TIMEOUT = 40.0
# Once stop() is asked, how much longer a round waits for its acknowledgements: the rows not
# acknowledged by then stay unpublished for the next relay (at least once). Without it a stop
# waited out a round up to FLUSH_TIMEOUT: the bridge's SIGTERM took 30 s when the broker was
# slow to give the producer its id (seen in tests/bridge/test_outbox.py).
STOP_FLUSH = 5.0
CONNECT_TIMEOUT = 10
# A round with a row for a topic not in the relay's list asks the cluster for the list again,
# at most this often. Without it such a row was produced and failed only after librdkafka's
# topic.metadata.propagation.max.ms (30 s), every round: every other topic waited as long.
TOPICS_RELISTED = 1.0

_SCHEMA = """
create table if not exists {table} (
    id            bigint      generated always as identity primary key,
    topic         text        not null,
    key           bytea,
    value         bytea,
    header_names  text[]      not null default '{{}}',
    header_values bytea[]     not null default '{{}}',
    created_at    timestamptz not null default now(),
    published_at  timestamptz
);
create index if not exists {unpublished} on {table} (id) where published_at is null
"""
_INSERT = (
    "insert into {table} (topic, key, value, header_names, header_values) "
    "values (%s, %s, %s, %s, %s) returning id"
)
_PENDING = (
    "select id, topic, key, value, header_names, header_values from {table} "
    "where published_at is null order by id limit %s"
)
_MARK = "update {table} set published_at = now() where id = any(%s)"
# The same, with each row's time from its transaction's start to now, by the database's own
# clock (no skew between the relay's host and the server's): the publish-latency histogram.
_MARK_TIMED = _MARK + " returning extract(epoch from now() - created_at)::float8"
_BACKLOG = "select count(*) from {table} where published_at is null"
# How often the active relay counts its backlog: a count walks the unpublished rows' index
# (about 10 ms per 100,000 rows).
BACKLOG_INTERVAL = 1.0
_PURGE = (
    "delete from {table} where ctid in (select ctid from {table} where published_at < "
    "now() - make_interval(secs => %s) limit 5000)"
)


class AddOptions(TypedDict, total=False):
    """outbox.add's options: `key` (a str goes UTF-8 encoded), `headers` (name, value) pairs
    (a str value goes UTF-8 encoded), `codec` for the value (as app.producer.send's)."""

    key: bytes | str | None
    headers: Iterable[tuple[str, bytes | str | None]] | None
    codec: str | Codec | None


class PostgresOutbox(PostgresTable):
    """Records to publish, written in the caller's transaction. `url`: the relay's database
    (None: postgres.url of the settings). `table`: the outbox table. `poll_interval` (s): how
    often the relay looks for rows without a notification. `retention` (s): how long published
    rows are kept. `batch`: rows per publication round. Those three left None are the
    settings' postgres.outbox.* (1 s, 3,600 s, 2,000 by default) when the relay starts."""

    def __init__(
        self,
        url: str | None = None,
        *,
        table: str = OUTBOX_TABLE,
        poll_interval: float | None = None,
        retention: float | None = None,
        batch: int | None = None,
    ) -> None:
        super().__init__(url, table)
        for name, number in (("poll_interval", poll_interval), ("retention", retention)):
            if number is not None and (not isinstance(number, int | float) or number <= 0):
                raise ConfigError(f"PostgresOutbox {name}={number!r}: seconds > 0")
        if batch is not None and (not isinstance(batch, int) or batch < 1):
            raise ConfigError(f"PostgresOutbox batch={batch!r}: an integer >= 1")
        self.poll_interval = None if poll_interval is None else float(poll_interval)
        self.retention = None if retention is None else float(retention)
        self.batch = batch
        self.channel = table  # the NOTIFY channel: the table's name
        identifier = sql.Identifier(table)
        self._schema = sql.SQL(_SCHEMA).format(
            table=identifier, unpublished=sql.Identifier(f"{table}_unpublished")
        )
        self._insert = sql.SQL(_INSERT).format(table=identifier).as_string(None)
        self._known = False  # the table was seen in this process: no more look-ups

    def _row(self, topic: str, value: Any, options: AddOptions) -> tuple[Any, ...]:
        # Encoded now, as app.producer.send would (bytes and None as they are, anything else
        # by `codec`, JSON by default): the relay publishes bytes and knows no codec.
        key, pairs = options.get("key"), list(options.get("headers") or ())
        return (
            topic,
            key.encode() if isinstance(key, str) else key,
            _encode(topic, value, options.get("codec")),
            [name for name, _ in pairs],
            [v.encode() if isinstance(v, str) else v for _, v in pairs],
        )

    def add(
        self, db: psycopg.Connection[Any], topic: str, value: Any, **options: Unpack[AddOptions]
    ) -> int:
        """Write a record for `topic` in `db`'s current transaction: published once it
        commits, never if it rolls back. On an autocommit connection outside a transaction,
        the insert is a transaction of its own. Returns the row's id: its kw.outbox.id."""
        row = self._row(topic, value, options)
        if not self._known:
            found = db.execute("select to_regclass(%s)", (self.table,)).fetchone()
            if found is None or found[0] is None:
                self._create(db)
            else:
                self._known = True
        found = db.execute(self._insert, row).fetchone()
        # Delivered by PostgreSQL at commit, and once per transaction however many adds.
        db.execute("select pg_notify(%s, '')", (self.channel,))
        return _row_id(found)

    async def add_async(
        self,
        db: psycopg.AsyncConnection[Any],
        topic: str,
        value: Any,
        **options: Unpack[AddOptions],
    ) -> int:
        """`add` for a psycopg.AsyncConnection (an async def handler's)."""
        row = self._row(topic, value, options)
        if not self._known:
            cursor = await db.execute("select to_regclass(%s)", (self.table,))
            found = await cursor.fetchone()
            if found is None or found[0] is None:
                await db.execute("select pg_advisory_xact_lock(hashtext(%s))", (self.table,))
                await db.execute(self._schema)
            else:
                self._known = True
        cursor = await db.execute(self._insert, row)
        found = await cursor.fetchone()
        await db.execute("select pg_notify(%s, '')", (self.channel,))
        return _row_id(found)

    def _create(self, db: psycopg.Connection[Any]) -> None:
        """The table, in `db`'s transaction (not marked known: that transaction may roll
        back). Processes starting together would race on the catalog: one creates, the others
        wait for it (as the inbox's)."""
        db.execute("select pg_advisory_xact_lock(hashtext(%s))", (self.table,))
        db.execute(self._schema)

    def relay(
        self,
        settings: Settings,
        *,
        client_id: str = "kafkaworker.outbox",
        metrics: Metrics | None = None,
    ) -> OutboxRelay:
        """The relay for this outbox (not started); StartupError in one line when it cannot
        work: no URL, or a database that does not answer. With `metrics`, it counts there
        (kafkaworker_outbox_*: the worker's /metrics)."""
        url, where = self.resolved("the outbox's relay", settings)
        try:
            with (
                psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT) as connection,
                connection.transaction(),
            ):
                self._create(connection)
        except psycopg.Error as exc:
            raise StartupError(
                f"the outbox's relay: cannot use PostgreSQL at {where}: {_one_line(exc)}"
            ) from None
        return OutboxRelay(self, url, where, settings, client_id=client_id, metrics=metrics)


def _row_id(found: tuple[Any, ...] | None) -> int:
    assert found is not None  # insert ... returning: one row
    return int(found[0])


class OutboxRelay:
    """Publishes one outbox table's rows. Its thread (owned here: start(), stop()) owns the
    lock connection and the producer; stop() ends it, flushing what is in flight."""

    def __init__(
        self,
        outbox: PostgresOutbox,
        url: str,
        where: str,
        settings: Settings,
        *,
        client_id: str,
        metrics: Metrics | None = None,
    ) -> None:
        from kafkaworker.producer import producer_config  # noqa: PLC0415

        self.outbox = outbox
        given = settings.postgres.outbox
        # What the declaration gave, else the settings' (postgres.outbox.*).
        self.poll_interval = outbox.poll_interval or given.poll_interval
        self.retention = outbox.retention or given.retention
        self.batch = outbox.batch or given.batch
        self._url = url
        self._where = where
        self._config = {**producer_config(settings), "client.id": client_id}
        table = sql.Identifier(outbox.table)
        self._pending = sql.SQL(_PENDING).format(table=table).as_string(None)
        self._metrics = metrics
        mark = _MARK if metrics is None else _MARK_TIMED
        self._mark = sql.SQL(mark).format(table=table).as_string(None)
        self._backlog = sql.SQL(_BACKLOG).format(table=table).as_string(None)
        self._purge = sql.SQL(_PURGE).format(table=table).as_string(None)
        self._thread = OwnedThread(self._run, name=f"kw-outbox-relay-{outbox.table}")
        self.active = threading.Event()  # set while this relay holds the lock
        # Its thread's life, for health(): started, and ended (stopped, or an escaped error).
        self._started = threading.Event()
        self._ended = threading.Event()
        self._topics: set[str] = set()  # topics the cluster listed, by the relay's thread
        self._listed_at = -TOPICS_RELISTED
        self.published = 0  # rows marked published by this relay (read by tests, logs)

    def start(self) -> OutboxRelay:
        self._thread.start()
        return self

    def stop(self, timeout: float = STOP_FLUSH + CONNECT_TIMEOUT + 5) -> None:
        self._thread.stop(timeout)

    @property
    def stopping(self) -> threading.Event:
        return self._thread.stopping

    def health(self) -> Health:
        """`kafkaworker outbox relay`'s /healthz and /readyz: live while its thread runs (it
        retries every failure itself, so only an escaped error ends it); ready as well, active
        or standing by: a relay standing by is the spare that takes over within seconds."""
        live = self._started.is_set() and not self._ended.is_set()
        return Health(live, live, {"active": self.active.is_set()})

    def _run(self) -> None:
        self._started.set()
        try:
            self._sessions()
        finally:
            self._ended.set()

    def _sessions(self) -> None:
        stopping = self._thread.stopping
        while not stopping.is_set():
            try:
                with psycopg.connect(
                    self._url, autocommit=True, connect_timeout=CONNECT_TIMEOUT
                ) as connection:
                    self._stand_by(connection)
                    if not stopping.is_set():
                        self._lead(connection)
            except Exception as exc:  # noqa: BLE001 - the database or Kafka: try again
                log.warning(
                    "outbox relay interrupted; it tries again",
                    database=self._where,
                    table=self.outbox.table,
                    error=_one_line(exc),
                    retry_in=LOCK_RETRY,
                )
            finally:
                if self.active.is_set():
                    self.active.clear()
                    if self._metrics is not None:
                        self._metrics.outbox_relay_active.labels(self.outbox.table).set(0)
                        self._metrics.outbox_backlog.labels(self.outbox.table).set(0)
                    log.info("outbox relay stands down", table=self.outbox.table)
            stopping.wait(LOCK_RETRY)

    def _stand_by(self, connection: psycopg.Connection[Any]) -> None:
        """Until this session holds the table's advisory lock (or the relay stops)."""
        lock = f"kafkaworker.outbox:{self.outbox.table}"
        announced = False
        while not self._thread.stopping.is_set():
            row = connection.execute("select pg_try_advisory_lock(hashtext(%s))", (lock,))
            got = row.fetchone()
            if got is not None and got[0]:
                self.active.set()
                if self._metrics is not None:
                    self._metrics.outbox_relay_active.labels(self.outbox.table).set(1)
                log.info("outbox relay active", table=self.outbox.table, database=self._where)
                return
            if not announced:
                log.info("outbox relay standing by", table=self.outbox.table)
                announced = True
            self._thread.stopping.wait(LOCK_RETRY)

    def _lead(self, connection: psycopg.Connection[Any]) -> None:
        """Publish while the lock is held: rounds until the table is drained, then wait for a
        notification or the polling interval. The session's end releases the lock."""
        import confluent_kafka  # noqa: PLC0415 - a client, made when used

        outbox, stopping = self.outbox, self._thread.stopping
        connection.execute(sql.SQL("listen {}").format(sql.Identifier(outbox.channel)))
        producer = confluent_kafka.Producer(self._config)
        purged_at = counted_at = 0.0
        try:
            while not stopping.is_set():
                if time.monotonic() - purged_at > min(self.retention, 60.0):
                    connection.execute(self._purge, (self.retention,))
                    purged_at = time.monotonic()
                if self._metrics is not None and time.monotonic() - counted_at > BACKLOG_INTERVAL:
                    counted = connection.execute(self._backlog).fetchone()
                    backlog = int(counted[0]) if counted is not None else 0
                    self._metrics.outbox_backlog.labels(outbox.table).set(backlog)
                    counted_at = time.monotonic()
                rows = connection.execute(self._pending, (self.batch,)).fetchall()
                if rows:
                    if self._publish(connection, producer, rows):
                        # Rows failed (and their keys wait): a pause, not a tight loop on a
                        # row that may never be published.
                        stopping.wait(LOCK_RETRY)
                        continue
                    if len(rows) == self.batch:
                        continue  # more waiting: no pause
                self._wait(connection)
        finally:
            producer.flush(5)

    def _wait(self, connection: psycopg.Connection[Any]) -> None:
        """Until a notification, the polling interval, or stop (in short slices: a long
        polling interval must not hold a stop)."""
        deadline = time.monotonic() + self.poll_interval
        while not self._thread.stopping.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            for _ in connection.notifies(timeout=min(left, 0.25), stop_after=1):
                return

    def _publish(
        self,
        connection: psycopg.Connection[Any],
        producer: confluent_kafka.Producer,
        rows: Sequence[tuple[Any, ...]],
    ) -> bool:
        """One round: the rows produced in id order (so in order per key: the idempotent
        producer keeps a partition's order across its retries), then the acknowledged ones
        marked; True when some were not (they are sent again next round).

        A key's order survives a row that fails: a row librdkafka refuses at once (larger
        than message.max.bytes, say) holds back every later row of its topic and key in the
        round (not produced), and an acknowledged row behind a row of its key whose delivery
        failed is left unmarked, so it is published again after that row. A row that can
        never be published holds its key back for good (the warning names it), never the
        other keys. Raises on what needs a new producer: a fatal error, a flush timed out."""
        from confluent_kafka import KafkaError, KafkaException  # noqa: PLC0415 - a client

        missing = self._missing_topics(producer, {row[1] for row in rows})
        acked: list[int] = []
        failed: dict[int, Any] = {}  # row id -> its KafkaError
        streams: dict[int, tuple[str, Any]] = {}  # row id -> (topic, key): what keeps order
        held: dict[tuple[str, Any], int] = {}  # (topic, key) -> its first row not published

        def report(error: Any, record: Any, row_id: int) -> None:
            if error is None:
                acked.append(row_id)
            else:
                failed[row_id] = error

        for row_id, topic, key, value, names, values in rows:
            stream = streams[row_id] = (topic, key)
            if stream in held:
                continue  # an earlier row of this key was refused: it goes first
            if topic in missing:
                failed[row_id] = KafkaError(
                    KafkaError.UNKNOWN_TOPIC_OR_PART, f"topic {topic!r} does not exist"
                )
                held[stream] = row_id
                continue
            headers = [*zip(names, values, strict=True), (ID_HEADER, str(row_id).encode())]
            while True:
                try:
                    producer.produce(
                        topic,
                        bytes(value) if value is not None else None,
                        key=bytes(key) if key is not None else None,
                        headers=headers,
                        on_delivery=functools.partial(report, row_id=row_id),
                    )
                    break
                except BufferError:
                    producer.poll(0.05)  # the local queue is full: serve deliveries
                except KafkaException as exc:  # refused by librdkafka itself
                    failed[row_id] = exc.args[0]
                    held[stream] = row_id
                    break
        left = self._flush(producer)
        for row_id in failed:
            stream = streams[row_id]
            held[stream] = min(held.get(stream, row_id), row_id)
        publishable = [i for i in acked if i < held.get(streams[i], i + 1)]
        if publishable:
            self._mark_published(connection, publishable)
        if left or any(error.fatal() for error in failed.values()):
            raise RuntimeError(
                f"{len(failed) + left} of {len(rows)} outbox records not acknowledged "
                f"({next(iter(failed.values())).str() if failed else 'flush timed out'}); "
                "they are sent again by a new producer"
            )
        if not failed:
            return False
        first = min(failed)
        log.warning(
            "outbox records not published; their keys wait for them, sent again next round",
            table=self.outbox.table,
            failed=len(failed),
            held_back=len(rows) - len(publishable) - len(failed),
            first_id=first,
            topic=streams[first][0],
            error=failed[first].str(),
        )
        return True

    def _flush(self, producer: confluent_kafka.Producer) -> int:
        """producer.flush(FLUSH_TIMEOUT), cut to STOP_FLUSH once the relay is stopping;
        returns how many records are still waiting."""
        stopping = self._thread.stopping
        deadline = time.monotonic() + FLUSH_TIMEOUT
        while (left := producer.flush(0.25)) and time.monotonic() < deadline:
            if stopping.is_set():
                deadline = min(deadline, time.monotonic() + STOP_FLUSH)
        return int(left)

    def _missing_topics(self, producer: confluent_kafka.Producer, topics: set[str]) -> set[str]:
        """Those of `topics` the cluster does not list: their rows wait, not produced."""
        unknown = topics - self._topics
        if unknown and time.monotonic() - self._listed_at >= TOPICS_RELISTED:
            listed = producer.list_topics(timeout=CONNECT_TIMEOUT).topics
            self._topics = {name for name, found in listed.items() if found.error is None}
            self._listed_at = time.monotonic()
            unknown = topics - self._topics
        return unknown

    def _mark_published(self, connection: psycopg.Connection[Any], ids: list[int]) -> None:
        marked = connection.execute(self._mark, (ids,))
        self.published += len(ids)
        if self._metrics is not None:
            table = self.outbox.table
            self._metrics.outbox_published.labels(table).inc(len(ids))
            latency = self._metrics.outbox_publish_seconds.labels(table)
            for (seconds,) in marked.fetchall():
                latency.observe(seconds)

"""The transactional inbox on PostgreSQL (psycopg 3): exactly-once effects in the database.

    inbox = PostgresInbox("postgresql://app@db/shop")

    @app.handler("payments", inbox=inbox, ordering="key", concurrency=16)
    def pay(msg: Message, db: psycopg.Connection) -> None:
        db.execute("insert into ledger ...")

Each call runs in a transaction on a connection of a pool sized to the handler's concurrency
(one per worker thread). In that transaction the runtime first records the message in the
inbox table, then calls the handler with the connection, and commits when it returns; an error
rolls both back, and the failure policy goes on as without an inbox (the DLQ write comes after
the rollback). A message recorded already (delivered again after a crash or a rebalance) is
finished at once without a call, and counted in `kafkaworker_deduplicated_total`. A batch
handler's call is one transaction that records the whole batch in one statement; the handler
gets the messages not recorded before, and is not called when none is left (docs/inbox.md).

The inbox table (created at start-up when missing; see docs/inbox.md):

    group_id text, topic text, partition integer, "offset" bigint, handled_at timestamptz,
    primary key (group_id, topic, partition, "offset")

Two guards, one cheap and one certain. The look-up: the offsets of a partition recorded at or
above the first offset this assignment runs are read in one query when the assignment's first
message runs (again only if a lane starts below that), so a replay after a crash costs no
transaction per duplicate. The insert: `on conflict do nothing` in the call's own transaction
is the guarantee, also against a member that still runs the message (a frozen one whose
partitions moved): PostgreSQL makes the second insert wait for the first transaction, and
finds the conflict once it commits.

Under `kafkaworker run` a thread of the handler's inbox deletes, every `cleanup_every` seconds,
the group's rows below its committed offsets that are older than `cleanup_after`, so the table
stays bounded (docs/inbox.md says why the age).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

try:
    import psycopg
    from psycopg import sql
    from psycopg.pq import TransactionStatus
    from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolTimeout
except ImportError as exc:  # pragma: no cover - the extra is missing
    raise ImportError(
        "kafkaworker.postgres needs psycopg 3: pip install 'kafkaworker[postgres]'"
    ) from exc

import structlog

from kafkaworker import headers as kw_headers
from kafkaworker.errors import BatchFailures, ConfigError, DatabaseUnavailable, StartupError
from kafkaworker.inbox import CommittedOffsets, RunAsync
from kafkaworker.outbox import ID_HEADER, OutboxRelay, PostgresOutbox
from kafkaworker.owned_thread import OwnedThread
from kafkaworker.postgres_table import PostgresTable
from kafkaworker.postgres_table import one_line as _one_line

if TYPE_CHECKING:
    from prometheus_client import Counter

    from kafkaworker.handlers import HandlerSpec
    from kafkaworker.observability.metrics import Metrics
    from kafkaworker.settings import Settings

log = structlog.get_logger("kafkaworker.inbox")

__all__ = [
    "TABLE",
    "AsyncPostgresInboxCalls",
    "OutboxRelay",
    "PostgresInbox",
    "PostgresInboxCalls",
    "PostgresOutbox",
]

TABLE = "kafkaworker_inbox"
# A transaction a failed statement aborted: nothing of it can commit.
INERROR = TransactionStatus.INERROR
# Start-up: how long the server may take to answer, and the pool to open all its connections.
CONNECT_TIMEOUT = 10.0
# How long a call waits for a pooled connection. Every worker thread has one of its own (the
# pool is as large as the concurrency), so a wait means the pool is replacing broken ones (the
# server restarted, or is down): the message then waits for the database like any outage
# (retried in place with backoff). Short, so that a revoke or a shutdown is not held long by
# a worker blocked here.
GETCONN_TIMEOUT = 5.0

# The cleanup: how often it runs, how old a row below the committed offset must be before it
# goes, and how many rows one statement deletes (short transactions, no long lock on the
# index). The age is the margin for a member frozen between fetching a message and recording
# it (its partitions long given to another member, which committed past it): its late insert
# must still meet the row and conflict, not find it deleted and run the handler again.
CLEANUP_EVERY = 60.0
CLEANUP_AFTER = 3600.0
CLEANUP_BATCH = 5000
# The inbox rows recording outbox records by their kw.outbox.id (outbox_row): deleted by the
# cleanup once older than cleanup_after, as the committed offsets say nothing of them.
OUTBOX_PARTITION = -1

_SCHEMA = """
create table if not exists {table} (
    group_id   text        not null,
    topic      text        not null,
    partition  integer     not null,
    "offset"   bigint      not null,
    handled_at timestamptz not null default now(),
    primary key (group_id, topic, partition, "offset")
)
"""
_INSERT = (
    'insert into {table} (group_id, topic, partition, "offset") values (%s, %s, %s, %s) '
    "on conflict do nothing"
)
_DELETE = (
    "delete from {table} where ctid in (select ctid from {table} where group_id = %s and "
    'topic = %s and partition = %s and "offset" < %s '
    "and handled_at < now() - make_interval(secs => %s) limit %s)"
)
# A batch's rows in one statement, in key order: two transactions recording overlapping rows
# (a frozen member's batch and its successor's) then wait for each other in the same order
# instead of deadlocking. Returns the rows it inserted; the others were recorded already.
_INSERT_BATCH = (
    'insert into {table} (group_id, topic, partition, "offset") '
    'select %s, topic, partition, "offset" '
    'from unnest(%s::text[], %s::integer[], %s::bigint[]) as r(topic, partition, "offset") '
    'order by 1, 2, 3 on conflict do nothing returning topic, partition, "offset"'
)
# The rows of a batch's failed messages (BatchFailures), taken out of its transaction before
# it commits, so that those messages run again.
_FORGET_BATCH = (
    'delete from {table} where group_id = %s and (topic, partition, "offset") in '
    "(select * from unnest(%s::text[], %s::integer[], %s::bigint[]))"
)
# The outbox ids recorded (OUTBOX_PARTITION): by age alone.
_DELETE_IDS = (
    "delete from {table} where ctid in (select ctid from {table} where group_id = %s and "
    "partition = -1 and handled_at < now() - make_interval(secs => %s) limit %s)"
)
# The recorded offsets in [low, high) of one partition (high null: no upper bound), read
# through the primary key's index.
_RECORDED = (
    'select "offset" from {table} where group_id = %s and topic = %s and partition = %s '
    'and "offset" >= %s and (%s::bigint is null or "offset" < %s)'
)


class PostgresInbox(PostgresTable):
    """A handler's `inbox=`: records handled messages in a PostgreSQL table, in the handler's
    own transaction. `url`: a postgresql:// URL or a libpq conninfo string. `table`: the inbox
    table's name (one table serves many handlers and groups). `cleanup_every`: how often (s)
    the worker deletes the rows below its group's committed offsets that are older than
    `cleanup_after` (s); None: never (`kafkaworker run` only: the TestClient has no group)."""

    def __init__(
        self,
        url: str | None = None,
        *,
        table: str = TABLE,
        cleanup_every: float | None = CLEANUP_EVERY,
        cleanup_after: float = CLEANUP_AFTER,
    ) -> None:
        super().__init__(url, table)
        if cleanup_every is not None and not (
            isinstance(cleanup_every, int | float) and cleanup_every > 0
        ):
            raise ConfigError(
                f"PostgresInbox cleanup_every={cleanup_every!r}: seconds > 0, or None (no cleanup)"
            )
        if not isinstance(cleanup_after, int | float) or cleanup_after < 0:
            raise ConfigError(f"PostgresInbox cleanup_after={cleanup_after!r}: seconds >= 0")
        self.cleanup_every = cleanup_every
        self.cleanup_after = cleanup_after

    def open(
        self,
        spec: HandlerSpec,
        *,
        group: str,
        metrics: Metrics,
        run_async: RunAsync | None = None,
        settings: Settings | None = None,
    ) -> PostgresInboxCalls | AsyncPostgresInboxCalls:
        """Check the server answers, create the table when missing, and open the handler's
        pool (a connection per worker thread, or per coroutine in flight: on the event loop,
        through `run_async`). StartupError, in one line, otherwise."""
        url, where = self.resolved(f"handler {spec.name!r}", settings)
        try:
            with (
                psycopg.connect(url, connect_timeout=int(CONNECT_TIMEOUT)) as connection,
                connection.transaction(),
            ):
                # Workers starting together would race on the catalog (a unique violation in
                # pg_type): one creates, the others wait and find it.
                connection.execute("select pg_advisory_xact_lock(hashtext(%s))", (self.table,))
                connection.execute(sql.SQL(_SCHEMA).format(table=sql.Identifier(self.table)))
        except psycopg.Error as exc:
            raise StartupError(
                f"handler {spec.name!r}: cannot use the inbox's PostgreSQL at {where}: "
                f"{_one_line(exc)}"
            ) from None
        options: dict[str, Any] = {
            "min_size": spec.concurrency,
            "max_size": spec.concurrency,
            # Transactions are opened explicitly, per call (conn.transaction()); a look-up
            # outside them is a statement of its own.
            "kwargs": {"autocommit": True},
            "open": False,
            "name": f"kw-inbox-{spec.name}",
            "timeout": GETCONN_TIMEOUT,
        }
        too_few = StartupError(
            f"handler {spec.name!r}: the inbox's PostgreSQL at {where} did not give "
            f"{spec.concurrency} connections (the handler's concurrency) within "
            f"{CONNECT_TIMEOUT:g} s: raise max_connections or lower the concurrency"
        )
        shared: dict[str, Any] = {
            "table": self.table,
            "group": group,
            "where": where,
            "deduplicated": metrics.deduplicated.labels(spec.name),
            "cleanup": _Cleanup.factory(self, url, where, group, spec.name),
        }
        if spec.is_async:
            if run_async is None:
                raise ValueError(f"handler {spec.name!r} is async but no event loop was given")

            async def open_async() -> AsyncConnectionPool[psycopg.AsyncConnection[Any]]:
                # Made on the loop: its locks, tasks and connections belong to it.
                pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]]
                pool = AsyncConnectionPool(url, **options)
                try:
                    await pool.open(wait=True, timeout=CONNECT_TIMEOUT)
                except PoolTimeout:
                    await pool.close()
                    raise too_few from None
                return pool

            return AsyncPostgresInboxCalls(run_async(open_async()), run_async, **shared)
        pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(url, **options)
        try:
            # All of them now: a server that cannot give the handler its concurrency in
            # connections (max_connections) is a start-up error, not a stall under load.
            pool.open(wait=True, timeout=CONNECT_TIMEOUT)
        except PoolTimeout:
            pool.close()
            raise too_few from None
        return PostgresInboxCalls(pool, **shared)


class _Recorded:
    """What the look-ups found for one partition's assignment: the recorded offsets not met
    yet, at or above `floor`, the lowest offset looked up from."""

    __slots__ = ("floor", "lock", "offsets")

    def __init__(self) -> None:
        self.floor: int | None = None
        self.offsets: set[int] = set()
        self.lock = threading.Lock()


class _InboxCalls:
    """What the def and async def handlers' inboxes share: the group, the statements for the
    table, the counter of messages not handled again, and the background clean-up."""

    def __init__(
        self,
        *,
        table: str,
        group: str,
        where: str,
        deduplicated: Counter,
        cleanup: Callable[[CommittedOffsets], _Cleanup] | None,
    ) -> None:
        self._cleanup_factory = cleanup
        self._cleanup: _Cleanup | None = None
        self._group = group
        self._where = where
        self._deduplicated = deduplicated
        name = sql.Identifier(table)
        self._insert = sql.SQL(_INSERT).format(table=name).as_string(None)
        self._recorded_query = sql.SQL(_RECORDED).format(table=name).as_string(None)
        self._insert_batch = sql.SQL(_INSERT_BATCH).format(table=name).as_string(None)
        self._forget_batch = sql.SQL(_FORGET_BATCH).format(table=name).as_string(None)
        # Look-up queries made: what the tests hold to "one per assignment", not one per
        # message.
        self.lookups = 0

    def start_cleanup(self, committed: CommittedOffsets) -> None:
        self._cleanup = _Cleanup.started(self._cleanup_factory, committed)

    # -- a batch handler's call: one transaction for the batch --------------------------------

    def _batch_rows(self, batch: list[Any]) -> list[list[tuple[str, str, int, int]]]:
        """Each message's inbox rows: its own, then those recorded with it (also_rows)."""
        group = self._group
        return [[(group, m.topic, m.partition, m.offset), *also_rows(group, m)] for m in batch]

    def _batch_args(self, rows: list[list[tuple[str, str, int, int]]]) -> tuple[Any, ...]:
        """The arguments of _INSERT_BATCH and _FORGET_BATCH: the group, then a column each."""
        flat = [row for message_rows in rows for row in message_rows]
        return (self._group, [r[1] for r in flat], [r[2] for r in flat], [r[3] for r in flat])

    @staticmethod
    def _claimed(
        batch: list[Any], rows: list[list[tuple[str, str, int, int]]], inserted: list[Any]
    ) -> list[Any]:
        """The messages of `batch` whose rows this transaction inserted, all of them: the
        others were recorded already (by the member that ran them, or, for a row recorded
        with it, by an earlier record of the same outbox id or original). A row two messages
        of the batch share (the same outbox record published twice) goes to the first."""
        left = {(str(t), int(p), int(o)) for t, p, o in inserted}
        fresh = []
        for msg, message_rows in zip(batch, rows, strict=True):
            keys = [row[1:] for row in message_rows]
            if all(key in left for key in keys):
                left.difference_update(keys)
                fresh.append(msg)
        return fresh

    def _committable(
        self, error: BatchFailures, fresh: list[Any], connection: Any
    ) -> tuple[BatchFailures, tuple[Any, ...]]:
        """A batch handler's BatchFailures, when its transaction can commit the messages it
        does not name, with the arguments of _FORGET_BATCH for the named ones' rows (what the
        handler wrote for them commits too, unless it wrote them in a savepoint it rolled
        back: `with db.transaction():`). Otherwise raises, inside the transaction, so that it
        rolls back and the whole batch fails: keys that are not the batch's messages (as
        without an inbox), or a transaction a failed statement aborted (nothing of it can
        commit; the first named error is the batch's, which the policy decides: retried
        together, or a fatal one run message by message)."""
        members = set(fresh)
        if not error.failures or any(key not in members for key in error.failures):
            raise error
        if connection.info.transaction_status is INERROR:
            raise next(iter(error.failures.values())) from error
        return error, self._batch_args(self._batch_rows(list(error.failures)))

    def _finish_batch(
        self, batch: list[Any], fresh: list[Any], failed: BatchFailures | None
    ) -> None:
        """After the batch's transaction committed: the messages not passed are counted (they
        are finished), and a BatchFailures goes on to the policy."""
        self._deduplicated.inc(len(batch) - len(fresh))
        if failed is not None:
            raise failed

    def _raise_for(
        self, exc: psycopg.Error | PoolTimeout, *, in_handler: bool, connection: Any
    ) -> NoReturn:
        """A database error during a call: the handler's own statement (the message's failure,
        which the policy decides), or the runtime's (DatabaseUnavailable: retried in place)."""
        if in_handler and connection is not None and not connection.broken:
            raise exc
        raise DatabaseUnavailable(
            f"the inbox's PostgreSQL at {self._where}: {_one_line(exc)}"
        ) from exc


class PostgresInboxCalls(_InboxCalls):
    """One handler's inbox while it runs: the owner of its connection pool, which `close()`
    closes (the AppRuntime calls it after the handler's workers stopped)."""

    def __init__(
        self,
        pool: ConnectionPool[psycopg.Connection[Any]],
        *,
        table: str,
        group: str,
        where: str,
        deduplicated: Counter,
        cleanup: Callable[[CommittedOffsets], _Cleanup] | None = None,
    ) -> None:
        super().__init__(
            table=table, group=group, where=where, deduplicated=deduplicated, cleanup=cleanup
        )
        self._pool = pool
        # By lease (a partition's assignment, hashed by identity); revoked ones are dropped as
        # new ones come.
        self._leases: dict[Any, _Recorded] = {}
        self._leases_lock = threading.Lock()  # a lease's look-ups are made under its lock

    def close(self) -> None:
        if self._cleanup is not None:
            self._cleanup.stop()
        self._pool.close()

    def wrap(self, call: Callable[[Any, Any], Any]) -> Callable[[Any], Any]:
        pool, insert, group = self._pool, self._insert, self._group
        recorded, deduplicated = self._recorded, self._deduplicated.inc

        def inbox_call(msg: Any) -> Any:
            # Whether an error came from the handler (its own SQL included: the policy
            # decides) or from the runtime's own statements (the database: retried in place).
            connection: psycopg.Connection[Any] | None = None
            in_handler = False
            try:
                with pool.connection() as connection:
                    if recorded(connection, msg):
                        deduplicated()
                        return None
                    rows = [(group, msg.topic, msg.partition, msg.offset), *also_rows(group, msg)]
                    # BEGIN and the inbox rows in one round trip: pipeline mode for the
                    # runtime's own statements only; the handler's run as usual. The
                    # Transaction counts as psycopg's own block, so that db.commit() in the
                    # handler is refused. S9: 4 round trips a message -> 3.
                    transaction = psycopg.Transaction(connection)
                    try:
                        with connection.pipeline():
                            transaction.__enter__()
                            cursors = [connection.execute(insert, row) for row in rows]
                        if any(cursor.rowcount == 0 for cursor in cursors):
                            # Recorded meanwhile, by a member that ran it too (a frozen one
                            # whose partitions moved): its transaction committed first. Or
                            # an outbox's record published again (a new offset, the same
                            # kw.outbox.id). Rolled back: a row of this message recorded
                            # with no call of its handler would skip a later message.
                            deduplicated()
                            transaction.force_rollback = True
                            result = None
                        else:
                            in_handler = True
                            result = call(msg, connection)
                            in_handler = False
                    except BaseException as exc:
                        if transaction.status is transaction.Status.ACTIVE:
                            transaction.__exit__(type(exc), exc, exc.__traceback__)
                        raise
                    transaction.__exit__(None, None, None)
                    return result  # committed
            except (psycopg.Error, PoolTimeout) as exc:
                self._raise_for(exc, in_handler=in_handler, connection=connection)

        return inbox_call

    def wrap_batch(self, call: Callable[[Any, Any], Any]) -> Callable[[Any], Any]:
        pool = self._pool

        def inbox_batch_call(batch: list[Any]) -> None:
            connection: psycopg.Connection[Any] | None = None
            in_handler = False
            fresh: list[Any] = []
            failed: BatchFailures | None = None
            try:
                with pool.connection() as connection:
                    unseen = [msg for msg in batch if not self._recorded(connection, msg)]
                    with connection.transaction():
                        if unseen:
                            rows = self._batch_rows(unseen)
                            cursor = connection.execute(self._insert_batch, self._batch_args(rows))
                            fresh = self._claimed(unseen, rows, cursor.fetchall())
                        if fresh:  # else the whole batch was recorded: no call
                            in_handler = True
                            try:
                                call(fresh, connection)
                            except BatchFailures as error:
                                failed, forget = self._committable(error, fresh, connection)
                                in_handler = False
                                connection.execute(self._forget_batch, forget)
                            in_handler = False
                    # committed
            except (psycopg.Error, PoolTimeout) as exc:
                self._raise_for(exc, in_handler=in_handler, connection=connection)
            self._finish_batch(batch, fresh, failed)

        return inbox_batch_call

    def _recorded(self, connection: psycopg.Connection[Any], msg: Any) -> bool:
        """Whether the message is recorded already, from the look-ups of its assignment (one
        query for the assignment's first message, another only for a lane that starts below
        what was looked up). A hit is forgotten: the message is not met again."""
        lease = msg.lease
        state = self._leases.get(lease)
        if state is None:
            with self._leases_lock:
                state = self._leases.get(lease)
                if state is None:
                    for old in [k for k in self._leases if k.revoked]:
                        del self._leases[old]
                    state = self._leases[lease] = _Recorded()
        offset: int = msg.offset
        if state.floor is None or offset < state.floor:
            with state.lock:
                floor = state.floor
                if floor is None or offset < floor:
                    rows = connection.execute(
                        self._recorded_query,
                        (self._group, msg.topic, msg.partition, offset, floor, floor),
                    ).fetchall()
                    state.offsets.update(row[0] for row in rows)
                    state.floor = offset
                    self.lookups += 1
        if offset in state.offsets:
            state.offsets.discard(offset)
            return True
        return False


class AsyncPostgresInboxCalls(_InboxCalls):
    """An async def handler's inbox while it runs: as PostgresInboxCalls, on the event loop
    (psycopg.AsyncConnection, AsyncConnectionPool). The owner of its pool, which `close()`
    closes on the loop."""

    def __init__(
        self,
        pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]],
        run_async: RunAsync,
        *,
        table: str,
        group: str,
        where: str,
        deduplicated: Counter,
        cleanup: Callable[[CommittedOffsets], _Cleanup] | None = None,
    ) -> None:
        super().__init__(
            table=table, group=group, where=where, deduplicated=deduplicated, cleanup=cleanup
        )
        self._pool = pool
        self._run_async = run_async
        # Only the loop touches these: no thread lock; a lease's asyncio lock keeps two of its
        # coroutines from looking up the same range.
        self._leases: dict[Any, _AsyncRecorded] = {}

    def close(self) -> None:
        if self._cleanup is not None:
            self._cleanup.stop()
        self._run_async(self._pool.close())

    def wrap(self, call: Callable[[Any, Any], Any]) -> Callable[[Any], Any]:
        pool, insert, group = self._pool, self._insert, self._group
        recorded, deduplicated = self._recorded, self._deduplicated.inc

        async def inbox_call(msg: Any) -> Any:
            connection: psycopg.AsyncConnection[Any] | None = None
            in_handler = False
            try:
                async with pool.connection() as connection:
                    if await recorded(connection, msg):
                        deduplicated()
                        return None
                    rows = [(group, msg.topic, msg.partition, msg.offset), *also_rows(group, msg)]
                    # As PostgresInboxCalls.wrap: BEGIN and the rows in one round trip.
                    transaction = psycopg.AsyncTransaction(connection)
                    try:
                        async with connection.pipeline():
                            await transaction.__aenter__()
                            cursors = [await connection.execute(insert, row) for row in rows]
                        if any(cursor.rowcount == 0 for cursor in cursors):
                            deduplicated()  # recorded meanwhile, or an outbox's repeat
                            transaction.force_rollback = True
                            result = None
                        else:
                            in_handler = True
                            result = await call(msg, connection)
                            in_handler = False
                    except BaseException as exc:
                        if transaction.status is transaction.Status.ACTIVE:
                            await transaction.__aexit__(type(exc), exc, exc.__traceback__)
                        raise
                    await transaction.__aexit__(None, None, None)
                    return result  # committed
            except (psycopg.Error, PoolTimeout) as exc:
                self._raise_for(exc, in_handler=in_handler, connection=connection)

        return inbox_call

    def wrap_batch(self, call: Callable[[Any, Any], Any]) -> Callable[[Any], Any]:
        pool = self._pool

        async def inbox_batch_call(batch: list[Any]) -> None:
            connection: psycopg.AsyncConnection[Any] | None = None
            in_handler = False
            fresh: list[Any] = []
            failed: BatchFailures | None = None
            try:
                async with pool.connection() as connection:
                    unseen = [msg for msg in batch if not await self._recorded(connection, msg)]
                    async with connection.transaction():
                        if unseen:
                            rows = self._batch_rows(unseen)
                            cursor = await connection.execute(
                                self._insert_batch, self._batch_args(rows)
                            )
                            fresh = self._claimed(unseen, rows, await cursor.fetchall())
                        if fresh:  # else the whole batch was recorded: no call
                            in_handler = True
                            try:
                                await call(fresh, connection)
                            except BatchFailures as error:
                                failed, forget = self._committable(error, fresh, connection)
                                in_handler = False
                                await connection.execute(self._forget_batch, forget)
                            in_handler = False
                    # committed
            except (psycopg.Error, PoolTimeout) as exc:
                self._raise_for(exc, in_handler=in_handler, connection=connection)
            self._finish_batch(batch, fresh, failed)

        return inbox_batch_call

    async def _recorded(self, connection: psycopg.AsyncConnection[Any], msg: Any) -> bool:
        """As PostgresInboxCalls._recorded, on the loop."""
        lease = msg.lease
        state = self._leases.get(lease)
        if state is None:
            for old in [k for k in self._leases if k.revoked]:
                del self._leases[old]
            state = self._leases[lease] = _AsyncRecorded()
        offset: int = msg.offset
        if state.floor is None or offset < state.floor:
            async with state.lock:
                floor = state.floor
                if floor is None or offset < floor:
                    cursor = await connection.execute(
                        self._recorded_query,
                        (self._group, msg.topic, msg.partition, offset, floor, floor),
                    )
                    state.offsets.update(row[0] for row in await cursor.fetchall())
                    state.floor = offset
                    self.lookups += 1
        if offset in state.offsets:
            state.offsets.discard(offset)
            return True
        return False


class _AsyncRecorded:
    """_Recorded for the loop: an asyncio lock."""

    __slots__ = ("floor", "lock", "offsets")

    def __init__(self) -> None:
        self.floor: int | None = None
        self.offsets: set[int] = set()
        self.lock = asyncio.Lock()


class _Cleanup:
    """Deletes, every `every` seconds, the inbox rows of one group below its committed offsets
    (and older than `after`): those offsets are never delivered to the group again, so their
    rows are never looked up. Its thread owns `committed` (closed when it ends) and opens a
    connection of its own per round, not one of the workers' pool."""

    def __init__(
        self,
        inbox: PostgresInbox,
        *,
        url: str,
        where: str,
        group: str,
        handler: str,
        committed: CommittedOffsets,
        every: float,
    ) -> None:
        self._url = url
        self._where = where
        self._after = inbox.cleanup_after
        self._every = every
        self._group = group
        self._handler = handler
        self._committed = committed
        self._delete = sql.SQL(_DELETE).format(table=sql.Identifier(inbox.table)).as_string(None)
        self._delete_ids = (
            sql.SQL(_DELETE_IDS).format(table=sql.Identifier(inbox.table)).as_string(None)
        )
        self._thread = OwnedThread(self._run, name=f"kw-inbox-cleanup-{handler}")
        self.deleted = 0  # rows deleted so far (read by the tests)
        self.rounds = 0  # rounds done

    @staticmethod
    def factory(
        inbox: PostgresInbox, url: str, where: str, group: str, handler: str
    ) -> Callable[[CommittedOffsets], _Cleanup] | None:
        every = inbox.cleanup_every
        if every is None:
            return None
        return lambda committed: _Cleanup(
            inbox,
            url=url,
            where=where,
            group=group,
            handler=handler,
            committed=committed,
            every=every,
        )

    @staticmethod
    def started(
        factory: Callable[[CommittedOffsets], _Cleanup] | None, committed: CommittedOffsets
    ) -> _Cleanup | None:
        if factory is None:
            committed.close()  # taken over: closed by its owner, which is here
            return None
        cleanup = factory(committed)
        cleanup._thread.start()
        return cleanup

    def stop(self) -> None:
        self._thread.stop(timeout=15.0)

    def _run(self) -> None:
        try:
            while not self._thread.stopping.wait(self._every):
                try:
                    self.deleted += self.once()
                except Exception as exc:  # noqa: BLE001 - the next round tries again
                    log.warning(
                        "inbox cleanup failed; the next round tries again",
                        handler=self._handler,
                        database=self._where,
                        error=_one_line(exc),
                        retry_in=self._every,
                    )
                self.rounds += 1
        finally:
            self._committed.close()

    def once(self) -> int:
        """One round: the rows deleted."""
        positions = self._committed.read()
        deleted = 0
        with psycopg.connect(
            self._url, autocommit=True, connect_timeout=int(CONNECT_TIMEOUT)
        ) as connection:
            for (topic, partition), offset in sorted(positions.items()):
                if offset <= 0:
                    continue  # nothing committed (librdkafka's -1001), or nothing below 0
                while not self._thread.stopping.is_set():
                    cursor = connection.execute(
                        self._delete,
                        (self._group, topic, partition, offset, self._after, CLEANUP_BATCH),
                    )
                    deleted += max(cursor.rowcount, 0)
                    if cursor.rowcount < CLEANUP_BATCH:
                        break
            while not self._thread.stopping.is_set():
                cursor = connection.execute(
                    self._delete_ids, (self._group, self._after, CLEANUP_BATCH)
                )
                deleted += max(cursor.rowcount, 0)
                if cursor.rowcount < CLEANUP_BATCH:
                    break
        return deleted


def outbox_row(group: str, msg: Any) -> tuple[str, str, int, int] | None:
    """The inbox row that records an outbox's record by its `kw.outbox.id` header, beside its
    offset's: the relay publishes a record again (a new offset) when it died between the
    broker's acknowledgement and marking the row, and this row makes the repeat a duplicate.
    Partition -1 (no partition's), the id as the offset; None without the header."""
    headers = getattr(msg, "headers", None)
    if headers:
        for name, value in headers:
            if name == ID_HEADER and value and value.isdigit():
                return (group, msg.topic, OUTBOX_PARTITION, int(value))
    return None


def origin_row(group: str, msg: Any) -> tuple[str, str, int, int] | None:
    """The inbox row of the record a retry-topic copy was made from (its kw.original.*
    headers), beside the copy's own: a copy is written when its original failed (and rolled
    back), and the original can still run again (a crash before its offset was committed)
    while the copy runs too; with this row, whichever commits second finds the other's row and
    is a duplicate. The original's own coordinates, so its topic's committed offsets clean it
    up. None for a record that is no copy."""
    headers = getattr(msg, "headers", None)
    if not headers:
        return None
    found = {name: value for name, value in headers if name in kw_headers.ORIGIN}
    topic = found.get(kw_headers.ORIGINAL_TOPIC)
    partition = found.get(kw_headers.ORIGINAL_PARTITION)
    offset = found.get(kw_headers.ORIGINAL_OFFSET)
    if not topic or not partition or not offset:
        return None
    try:
        row = (group, topic.decode(), int(partition), int(offset))
    except (UnicodeDecodeError, ValueError):
        return None  # not ours: written by hand
    if row[1:] == (msg.topic, msg.partition, msg.offset):
        return None  # the original itself: its own row is recorded already
    return row


def also_rows(group: str, msg: Any) -> list[tuple[str, str, int, int]]:
    """The rows recorded with a message's own: by its kw.outbox.id, by its original's
    coordinates."""
    return [row for row in (outbox_row(group, msg), origin_row(group, msg)) if row is not None]

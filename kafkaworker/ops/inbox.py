"""The database inbox's rows as `kafkaworker offsets reset` must see them: a reset moves a
group back, but the inbox (kafkaworker/postgres.py) still holds the rows of the messages it
handled at and above the new positions until its cleanup deletes them (only below the committed
offsets, and only once older than `cleanup_after`, an hour by default). Replayed, those
messages would be finished without a call: counted as deduplicated, not run again. So the
reset says how many, and `--forget-inbox` deletes them, to run them again."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from kafkaworker.errors import KafkaWorkerError, StartupError

if TYPE_CHECKING:
    from kafkaworker.settings import Settings

# kafkaworker.postgres.TABLE, which cannot be imported without psycopg (tests/unit/test_inbox.py
# checks they agree).
INBOX_TABLE = "kafkaworker_inbox"

# Each partition's rows at or above its new position ("offset" >= target). The outbox ids the
# inbox records (partition -1) are no positions: never counted, never forgotten here.
_WHERE = 'where group_id = %s and topic = %s and partition = %s and "offset" >= %s'
_AT_OR_ABOVE = "select count(*) from {table} " + _WHERE
_FORGET = "delete from {table} " + _WHERE


class InboxRows:
    """One inbox table (postgres.url of the settings), as seen by an offsets reset of `group`
    on `topic`."""

    def __init__(self, settings: Settings, table: str, group: str, topic: str) -> None:
        try:
            import psycopg  # noqa: PLC0415 - the postgres extra, only when an inbox is asked of
        except ImportError:
            raise StartupError(
                "the inbox needs psycopg: pip install 'kafkaworker[postgres]'"
            ) from None
        from kafkaworker.postgres_table import IDENTIFIER, where  # noqa: PLC0415 - psycopg's

        if not IDENTIFIER.fullmatch(table):
            raise StartupError(f"--inbox-table {table!r}: an unquoted identifier")
        secret = settings.postgres.url
        if secret is None:
            raise StartupError(
                "the inbox's database: postgres.url is not set: set it (env "
                "KAFKAWORKER_POSTGRES__URL) to the database of the group's inbox"
            )
        self._psycopg = psycopg
        self.url = secret.get_secret_value()
        try:
            self.where = where(self.url, "settings postgres.url")
        except KafkaWorkerError as exc:
            raise StartupError(str(exc)) from None
        self.table = table
        self._group = group
        self._topic = topic

    def _connect(self) -> Any:
        try:
            return self._psycopg.connect(self.url, connect_timeout=10)
        except self._psycopg.Error as exc:
            from kafkaworker.postgres_table import one_line  # noqa: PLC0415 - needs psycopg

            raise StartupError(f"the inbox's PostgreSQL at {self.where}: {one_line(exc)}") from None

    def check(self) -> None:
        """StartupError in one line when the database does not answer."""
        with self._connect():
            pass

    def _statement(self, text: str) -> Any:
        from psycopg import sql  # noqa: PLC0415 - with psycopg itself

        return sql.SQL(text).format(table=sql.Identifier(self.table))

    def exists(self, db: Any) -> bool:
        found = db.execute("select to_regclass(%s)", (self.table,)).fetchone()
        return found is not None and found[0] is not None

    def at_or_above(self, targets: Mapping[int, int]) -> dict[int, int]:
        """Per partition, the rows at or above its target (a table not there yet: none)."""
        counted: dict[int, int] = {}
        with self._connect() as db:
            if not self.exists(db):
                return {p: 0 for p in targets}
            statement = self._statement(_AT_OR_ABOVE)
            for partition, target in targets.items():
                row = db.execute(
                    statement, (self._group, self._topic, partition, target)
                ).fetchone()
                counted[partition] = int(row[0]) if row else 0
        return counted

    def forget(self, targets: Mapping[int, int]) -> int:
        """Delete the rows at or above each target, in one transaction; how many."""
        deleted = 0
        with self._connect() as db, db.transaction():
            if not self.exists(db):
                return 0
            statement = self._statement(_FORGET)
            for partition, target in targets.items():
                cursor = db.execute(statement, (self._group, self._topic, partition, target))
                deleted += cursor.rowcount
        return deleted

"""What the inbox and the outbox share without the runtime: a PostgreSQL URL (given, or the
settings' postgres.url at start-up) and a table of theirs, checked at declaration, and the
way their error lines name the server (host:port and database, never the password)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import psycopg
from psycopg.conninfo import conninfo_to_dict

from kafkaworker.errors import ConfigError, StartupError

if TYPE_CHECKING:
    from kafkaworker.settings import Settings

IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


class PostgresTable:
    """A declaration's database and table. `url` checked now when given (a typo is a
    declaration error); None: postgres.url of the settings, resolved at start-up."""

    def __init__(self, url: str | None, table: str) -> None:
        kind = type(self).__name__
        if url is not None and not isinstance(url, str):
            raise ConfigError(f"{kind} url={url!r}: a postgresql:// URL")
        self.where = where(url, f"{kind} url") if url is not None else None
        if not isinstance(table, str) or not IDENTIFIER.fullmatch(table):
            raise ConfigError(
                f"{kind} table={table!r}: an unquoted identifier ([A-Za-z_][A-Za-z0-9_]*)"
            )
        self.url = url
        self.table = table

    def __repr__(self) -> str:
        shown = self.where or "postgres.url of the settings"
        return f"{type(self).__name__}({shown}, table={self.table})"

    def resolved(self, who: str, settings: Settings | None) -> tuple[str, str]:
        """The URL and where it points, for lines; StartupError starting with `who` when there
        is none or it is no URL."""
        if self.url is not None and self.where is not None:
            return self.url, self.where
        kind = type(self).__name__
        secret = settings.postgres.url if settings is not None else None
        if secret is None:
            raise StartupError(
                f"{who}: {kind}() was given no URL and postgres.url is not set: set it "
                f"(env KAFKAWORKER_POSTGRES__URL) or give {kind}(url)"
            )
        url = secret.get_secret_value()
        try:
            return url, where(url, "settings postgres.url")
        except ConfigError as exc:
            raise StartupError(f"{who}: {exc}") from None


def where(url: str, what: str) -> str:
    """Where a URL points, as error lines name it (host:port, database): never the password.
    ConfigError naming `what` when it is no URL (without the text: it may hold a password)."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        raise ConfigError(f"{what}: not a postgresql:// URL or a libpq conninfo string") from None
    host = params.get("host") or params.get("hostaddr") or "localhost"
    port = params.get("port") or "5432"
    return f"{host}:{port}, database {params.get('dbname') or '(default)'}"


def one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__

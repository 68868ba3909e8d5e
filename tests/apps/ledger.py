"""A test app whose handler writes one ledger row per message through the inbox, for the
inbox's fault tests (tests/faults/test_inbox.py) to count in the database.

Configured by environment: LEDGER_URL (the database), LEDGER_TOPIC, LEDGER_GROUP,
LEDGER_CONCURRENCY, LEDGER_SLEEP (seconds per message, inside the transaction), LEDGER_ASYNC=1
(an async def handler with a psycopg.AsyncConnection), LEDGER_BATCH=N (a batch handler of up to
N messages, one transaction per batch, LEDGER_SLEEP per message). The ledger table has no
unique constraint: a message handled twice would be two rows.
"""

from __future__ import annotations

import asyncio
import os
import time

import psycopg

from kafkaworker import App, BatchPolicy, Message
from kafkaworker.postgres import PostgresInbox

app = App("ledger")
_SLEEP = float(os.environ.get("LEDGER_SLEEP", "0"))
_pid = os.getpid()


_INSERT = 'insert into ledger (partition, "offset", key, value, pid) values (%s, %s, %s, %s, %s)'


def _row(msg: Message[bytes]) -> tuple[object, ...]:
    return (msg.partition, msg.offset, (msg.key or b"").decode(), msg.value.decode(), _pid)


def ledger(msg: Message[bytes], db: psycopg.Connection) -> None:
    db.execute(_INSERT, _row(msg))
    if _SLEEP:
        time.sleep(_SLEEP)


async def ledger_async(msg: Message[bytes], db: psycopg.AsyncConnection) -> None:
    await db.execute(_INSERT, _row(msg))
    if _SLEEP:
        await asyncio.sleep(_SLEEP)


def ledger_batch(msgs: list[Message[bytes]], db: psycopg.Connection) -> None:
    with db.cursor() as cursor:
        cursor.executemany(_INSERT, [_row(msg) for msg in msgs])
    if _SLEEP:
        time.sleep(_SLEEP * len(msgs))


_BATCH = int(os.environ.get("LEDGER_BATCH", "0"))
app.handler(
    os.environ.get("LEDGER_TOPIC", "ledger"),
    group=os.environ.get("LEDGER_GROUP"),
    inbox=PostgresInbox(os.environ.get("LEDGER_URL", "postgresql://127.0.0.1/ledger")),
    ordering="key",
    concurrency=int(os.environ.get("LEDGER_CONCURRENCY", "8")),
    codec="raw",
    name="ledger",
    batch=BatchPolicy(max_size=_BATCH, max_wait=0.05) if _BATCH else None,
)(ledger_batch if _BATCH else ledger_async if os.environ.get("LEDGER_ASYNC") == "1" else ledger)

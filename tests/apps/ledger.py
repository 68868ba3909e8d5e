"""A test app whose handler writes one ledger row per message through the inbox, for the
inbox's fault tests (tests/faults/test_inbox.py) to count in the database.

Configured by environment: LEDGER_URL (the database), LEDGER_TOPIC, LEDGER_GROUP,
LEDGER_CONCURRENCY, LEDGER_SLEEP (seconds per message, inside the transaction). The ledger
table has no unique constraint: a message handled twice would be two rows.
"""

from __future__ import annotations

import os
import time

import psycopg

from kafkaworker import App, Message
from kafkaworker.postgres import PostgresInbox

app = App("ledger")
_SLEEP = float(os.environ.get("LEDGER_SLEEP", "0"))
_pid = os.getpid()


@app.handler(
    os.environ.get("LEDGER_TOPIC", "ledger"),
    group=os.environ.get("LEDGER_GROUP"),
    inbox=PostgresInbox(os.environ.get("LEDGER_URL", "postgresql://127.0.0.1/ledger")),
    ordering="key",
    concurrency=int(os.environ.get("LEDGER_CONCURRENCY", "8")),
    codec="raw",
    name="ledger",
)
def ledger(msg: Message[bytes], db: psycopg.Connection) -> None:
    db.execute(
        'insert into ledger (partition, "offset", key, value, pid) values (%s, %s, %s, %s, %s)',
        (msg.partition, msg.offset, (msg.key or b"").decode(), msg.value.decode(), _pid),
    )
    if _SLEEP:
        time.sleep(_SLEEP)

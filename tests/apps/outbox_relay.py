"""A test app that declares an outbox and nothing else, for `kafkaworker outbox relay
tests.apps.outbox_relay:app` in the outbox's fault tests (tests/faults/test_outbox.py).

Configured by environment: OUTBOX_URL (the database), OUTBOX_BATCH (rows per round)."""

from __future__ import annotations

import os

from kafkaworker import App
from kafkaworker.postgres import PostgresOutbox

app = App("outbox-relay")
app.outbox(
    PostgresOutbox(
        os.environ.get("OUTBOX_URL", "postgresql://127.0.0.1/outbox"),
        batch=int(os.environ.get("OUTBOX_BATCH", "2000")),
    )
)

"""The fleet tests' app, run as real `kafkaworker run` processes: one handler on FLEET_TOPIC
(and FLEET_TOPIC.dlq as its DLQ), in app FLEET_APP. Each handled record is a line
"<pid> <topic> <partition> <offset> <value>" appended to FLEET_RECORD in one O_APPEND write.
A value {"fail": true} fails (no retry: to the DLQ) while the file FLEET_BROKEN exists: the
bug, until a test "fixes" it by deleting the file and replays the record."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from kafkaworker import App, Message

TOPIC = os.environ.get("FLEET_TOPIC", "fleet")
RECORD = os.environ.get("FLEET_RECORD")
BROKEN = Path(os.environ.get("FLEET_BROKEN", "/nonexistent"))

app = App(os.environ.get("FLEET_APP", "fleet"))


class BrokenOrderError(Exception):
    """An order the handler cannot take yet."""


@app.handler(TOPIC, dlq=f"{TOPIC}.dlq", retries=0)
def handle_order(msg: Message[dict[str, Any]]) -> None:
    if msg.value.get("fail") and BROKEN.exists():
        raise BrokenOrderError(f"order {msg.value['id']} is broken")
    if RECORD:
        line = f"{os.getpid()} {msg.topic} {msg.partition} {msg.offset} {msg.value['id']}\n"
        fd = os.open(RECORD, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

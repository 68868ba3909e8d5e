"""The dashboard tests' app: one handler, a DLQ, failures on demand.

Configured by environment: DASH_TOPIC (its DLQ is DASH_TOPIC.dlq), DASH_GROUP, DASH_SLEEP
(seconds per message, to make lag visible), DASH_MODE (stream, or queue: a share group).
A JSON value {"fail": true} fails every attempt (one in-place retry, or in queue mode one
redelivery, then the DLQ), with a message naming the order's id.
"""

from __future__ import annotations

import os
import time
from typing import Any

from kafkaworker import App, Backoff, Message

TOPIC = os.environ.get("DASH_TOPIC", "dash")
_SLEEP = float(os.environ.get("DASH_SLEEP", "0"))

app = App(os.environ.get("DASH_GROUP", "dash"))


class BrokenOrderError(Exception):
    """An order the test wants dead-lettered."""


def _check(order: dict[str, Any]) -> None:
    if order.get("fail"):
        raise BrokenOrderError(f"order {order['id']} is broken")


@app.handler(
    TOPIC,
    mode="queue" if os.environ.get("DASH_MODE") == "queue" else "stream",
    retries=1,
    backoff=Backoff(initial=0.01, max=0.01),
    dlq=f"{TOPIC}.dlq",
)
def handle_order(msg: Message[dict[str, Any]]) -> None:
    if _SLEEP:
        time.sleep(_SLEEP)
    _check(msg.value)

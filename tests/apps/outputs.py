"""A test app with a handler output: each input {"id": n} produces {"id": n, "done": true}.

Configured by environment: OUTPUTS_TOPIC, OUTPUTS_OUTPUT, OUTPUTS_STARTS (a file: one line per
handled input, written before the handler returns, so before its output is acknowledged),
OUTPUTS_ASYNC=1 (the handler is an `async def`).
"""

from __future__ import annotations

import os
from typing import Any

from kafkaworker import App, Message

app = App("outputs")
_starts = os.open(
    os.environ.get("OUTPUTS_STARTS", "/dev/null"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644
)


def accept(msg: Message[dict[str, Any]]) -> dict[str, Any]:
    os.write(_starts, f"{msg.value['id']}\n".encode())
    return {"id": msg.value["id"], "done": True}


async def accept_async(msg: Message[dict[str, Any]]) -> dict[str, Any]:
    return accept(msg)


app.handler(
    os.environ.get("OUTPUTS_TOPIC", "in"),
    output=os.environ.get("OUTPUTS_OUTPUT", "out"),
    name="accept",
)(accept_async if os.environ.get("OUTPUTS_ASYNC") == "1" else accept)

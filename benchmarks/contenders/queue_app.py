"""S7's worker: one handler in stream or queue mode, as `kafkaworker run` runs it.

Environment: BENCH_TOPIC, BENCH_GROUP, BENCH_MODE (stream|queue), BENCH_CONCURRENCY,
BENCH_SLEEP_MS (0: decode only), BENCH_FILE: each handled record appends the wall time it was
done as one fixed-width line (18 bytes), so the runner counts records by the file's size.
"""

from __future__ import annotations

import os
import time
from typing import Any

from kafkaworker import App, Message

app = App("bench-s7")
_fd = os.open(os.environ["BENCH_FILE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
_sleep = float(os.environ.get("BENCH_SLEEP_MS", "0")) / 1000
_mode = os.environ.get("BENCH_MODE", "stream")


def handle(msg: Message[Any]) -> None:
    msg.value  # noqa: B018 - decoding is part of the work
    if _sleep:
        time.sleep(_sleep)
    os.write(_fd, b"%17.6f\n" % time.time())


app.handler(
    os.environ["BENCH_TOPIC"],
    group=os.environ["BENCH_GROUP"],
    mode=_mode,  # type: ignore[arg-type]
    concurrency=int(os.environ.get("BENCH_CONCURRENCY", "8")),
    ordering="partition" if _mode == "stream" else "none",
    name="s7",
)(handle)

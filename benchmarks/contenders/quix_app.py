"""Quix Streams: a StreamingDataFrame over a JSON topic (its documented way)."""

from __future__ import annotations

import threading
import time
from typing import Any

from _meter import Meter, args
from quixstreams import Application


def main() -> None:
    a = args()
    sleep = float(a.get("sleep_ms", "0")) / 1000
    meter = Meter(int(a["messages"]), latency=a.get("latency") == "1")
    app = Application(
        broker_address=a["bootstrap"],
        consumer_group=a["group"],
        auto_offset_reset="earliest",
        loglevel=None,
    )
    topic = app.topic(a["topic"], value_deserializer="json")
    sdf = app.dataframe(topic)

    def handle(value: dict[str, Any]) -> None:
        if sleep:
            time.sleep(sleep)
        meter.hit(1, value.get("ts"))

    sdf.update(handle)

    def stop_when_done() -> None:
        meter.done.wait()
        app.stop()

    threading.Thread(target=stop_when_done, daemon=True).start()
    app.run()
    meter.write(a["out"], "quixstreams")


if __name__ == "__main__":
    main()

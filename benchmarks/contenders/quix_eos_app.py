"""Quix Streams copying a JSON topic to another with processing_guarantee="exactly-once" (S8).

Runs until the suite terminates it (SIGTERM: Quix's own graceful stop). commit_interval 0.1 s,
as kafkaworker's transaction_interval, rather than Quix's default 5 s, so that both commit a
transaction as often and the latencies compare like with like.
"""

from __future__ import annotations

from typing import Any

from _meter import args
from quixstreams import Application


def main() -> None:
    a = args()
    app = Application(
        broker_address=a["bootstrap"],
        consumer_group=a["group"],
        auto_offset_reset="earliest",
        processing_guarantee="exactly-once",
        commit_interval=0.1,
        loglevel=None,
    )
    source = app.topic(a["topic"], value_deserializer="json")
    output = app.topic(a["output"], value_serializer="json")
    sdf = app.dataframe(source)

    def copy(value: dict[str, Any]) -> dict[str, Any]:
        return {"id": value["id"], "ts": value.get("ts")}

    sdf.apply(copy).to_topic(output)
    app.run()


if __name__ == "__main__":
    main()

"""kafkaworker, as a user would write it: a decorated handler, the runtime does the rest."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from typing import Any

from _meter import Meter, args

from kafkaworker import App, BatchPolicy, Message, Settings
from kafkaworker.handlers import resolve_specs
from kafkaworker.runtime.runner import Runner


def main() -> None:
    a = args()
    sleep = float(a.get("sleep_ms", "0")) / 1000
    meter = Meter(int(a["messages"]), latency=a.get("latency") == "1")
    if "switch_interval" in a:
        sys.setswitchinterval(float(a["switch_interval"]))
    app = App("bench")

    options: dict[str, Any] = {
        "group": a["group"],
        "concurrency": int(a.get("concurrency", "8")),
        "ordering": a.get("ordering", "partition"),
    }
    if "batch" in a:
        # A batch handler (list[Message]): what a bulk sink would use.
        options["batch"] = BatchPolicy(max_size=int(a["batch"]), max_wait=0.05)

        @app.handler(a["topic"], **options)
        def handle_batch(msgs: list[Message[Any]]) -> None:
            for msg in msgs:
                msg.value  # noqa: B018 - decoding is the work
            meter.hit(len(msgs))

    elif a.get("async") == "1":
        # An async def handler on the event loop; --concurrency is coroutines in flight.
        @app.handler(a["topic"], **options)
        async def handle_async(msg: Message[Any]) -> None:
            value = msg.value
            if sleep:
                await asyncio.sleep(sleep)
            meter.hit(1, value.get("ts"))

    else:

        @app.handler(a["topic"], **options)
        def handle(msg: Message[Any]) -> None:
            value = msg.value
            if sleep:
                time.sleep(sleep)
            meter.hit(1, value.get("ts"))

    traced: dict[str, Any] = {}
    if "tracing" in a:
        # --tracing SAMPLER[:ARGUMENT] --otlp ENDPOINT: tracing on, set up as `kafkaworker run`
        # does from the standard variables, exporting to a real collector.
        sampler, _, argument = a["tracing"].partition(":")
        os.environ.update(
            OTEL_TRACES_SAMPLER=sampler,
            OTEL_TRACES_SAMPLER_ARG=argument,
            OTEL_EXPORTER_OTLP_ENDPOINT=a["otlp"],
            OTEL_SERVICE_NAME="bench",
        )
        traced = {"tracing": {"enabled": True}}
    settings = Settings.model_validate(
        {
            **traced,
            "kafka": {"bootstrap_servers": a["bootstrap"]},
            "log_level": "WARNING",
            **({"event_loop": a["event_loop"]} if "event_loop" in a else {}),
            **({"poll_batch": int(a["poll_batch"])} if "poll_batch" in a else {}),
            **(
                {
                    "max_pending": int(a["max_pending"]),
                    "max_pending_per_partition": int(
                        a.get("max_pending_per_partition", int(a["max_pending"]) // 4)
                    ),
                }
                if "max_pending" in a
                else {}
            ),
        }
    )
    runner = Runner(app, settings, resolve_specs(app, settings))

    def stop_when_done() -> None:
        meter.done.wait()
        runner.stop()

    threading.Thread(target=stop_when_done, daemon=True).start()
    runner.run()
    meter.write(
        a["out"],
        "kafkaworker",
        concurrency=int(a.get("concurrency", "8")),
        ordering=a.get("ordering", "partition"),
        # How often backpressure stopped taking records, and paused partitions (each pause
        # drops the partition's prefetched records in librdkafka).
        backpressure={
            "withheld": sum(w.poller.stats.withheld for w in runner.handlers),
            "pauses": sum(w.poller.stats.pauses for w in runner.handlers),
        },
    )


if __name__ == "__main__":
    main()

"""kafkaworker with a decode-only handler in a format (--format json|avro|json_schema|protobuf;
--registry URL), as a user would write it."""

from __future__ import annotations

import threading
from typing import Any

from _formats import codec_for
from _meter import Meter, args

from kafkaworker import App, Message, Settings
from kafkaworker.handlers import resolve_specs
from kafkaworker.runtime.runner import Runner


def main() -> None:
    a = args()
    meter = Meter(int(a["messages"]))
    app = App("bench")
    codec = codec_for(a["format"], a.get("registry", ""))

    options: dict[str, Any] = {"group": a["group"], **({"codec": codec} if codec else {})}
    if "concurrency" in a:  # worker threads; kafkaworker's default (8) otherwise
        options["concurrency"] = int(a["concurrency"])

    @app.handler(a["topic"], **options)
    def handle(msg: Message[Any]) -> None:
        msg.value  # noqa: B018 - decoding is the work
        meter.hit(1)

    settings = Settings.model_validate(
        {"kafka": {"bootstrap_servers": a["bootstrap"]}, "log_level": "WARNING"}
    )
    runner = Runner(app, settings, resolve_specs(app, settings))

    def stop_when_done() -> None:
        meter.done.wait()
        runner.stop()

    threading.Thread(target=stop_when_done, daemon=True).start()
    runner.run()
    meter.write(a["out"], f"kafkaworker {a['format']}")


if __name__ == "__main__":
    main()

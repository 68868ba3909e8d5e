"""The files of kafkaworker one message passes through, read off a real run.

A worker runs against a broker with a profiler on every thread; once it is idle, the files
functions that run during a quiet window are noted, then one record is produced and the
functions that run until its offset is committed are noted; the files of the functions that
ran only for the message are its path. Two paths: a handler that returns (the happy path),
and one that fails until its retries are spent and dead-letters the message (the failure
path). docs/architecture.md walks both.

    python -m tools.message_path --bootstrap 127.0.0.1:9092
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

import kafkaworker
from kafkaworker import App, Backoff, Message, Settings
from kafkaworker.runtime.poll.poller import Poller
from kafkaworker.testing.worker import running

PACKAGE = Path(kafkaworker.__file__).resolve().parent
# Run once per turn of the poll thread in which something changed, however many messages it
# took or finished: the pausing decisions and the once-a-second gauges. Listed apart.
PER_TURN = {
    "runtime/poll/backpressure.py",
    "runtime/poll/delayed.py",
    "runtime/poll/gauges.py",
    "runtime/poll/pausing.py",
}


class Files:
    """The package's functions (file, name) called while `on` (a profiler on every thread:
    threading.setprofile reaches the threads started after it)."""

    def __init__(self) -> None:
        self.on = False
        self.seen: set[tuple[str, str]] = set()

    def profile(self, frame: FrameType, event: str, arg: Any) -> None:
        if self.on and event == "call":
            path = frame.f_code.co_filename
            if path.startswith(str(PACKAGE)):
                where = str(Path(path).relative_to(PACKAGE))
                self.seen.add((where, frame.f_code.co_qualname))

    def during(self, action: Callable[[], None]) -> set[tuple[str, str]]:
        self.seen = set()
        self.on = True
        try:
            action()
        finally:
            self.on = False
        return set(self.seen)


def committed(bootstrap: str, group: str, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        [tp] = consumer.committed([TopicPartition(topic, 0)], 10)
        return int(tp.offset)
    finally:
        consumer.close()


def path_of(bootstrap: str, files: Files, *, fail: bool) -> set[tuple[str, str]]:
    topic = f"path-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(30)
    app = App(f"g-{topic}")
    # The failure path: retries spent, then the DLQ. The happy path: a handler that returns,
    # in partition order (the default), with no DLQ.
    options: dict[str, Any] = (
        {"retries": 2, "backoff": Backoff(initial=0.01, max=0.01), "dlq": f"{topic}.dlq"}
        if fail
        else {}
    )

    @app.handler(topic, **options)
    def handle(msg: Message[Any]) -> None:
        msg.value  # noqa: B018 - decoded, as most handlers do
        if fail:
            raise ValueError("a failure that retries do not fix")

    settings = Settings.model_validate(
        {"kafka": {"bootstrap_servers": bootstrap}, "commit_interval": 0.1, "log_level": "ERROR"}
    )
    with running(app, settings) as runner:
        deadline = time.monotonic() + 30
        poller = runner.handlers[0].poller
        assert isinstance(poller, Poller)
        while not poller.partitions and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.5)  # the start's commits and the first gauge refreshes are over
        idle = files.during(lambda: time.sleep(2.0))

        def one_message() -> None:
            producer = Producer({"bootstrap.servers": bootstrap})
            producer.produce(topic, b'{"id": 1}')
            producer.flush(10)
            end = time.monotonic() + 30
            while committed(bootstrap, app.name, topic) < 1 and time.monotonic() < end:
                time.sleep(0.1)
            time.sleep(0.5)

        busy = files.during(one_message)
    return busy - idle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--functions", action="store_true", help="list the functions too")
    args = parser.parse_args()
    files = Files()
    threading.setprofile(files.profile)
    sys.setprofile(files.profile)
    for name, fail in (("happy path", False), ("failure path", True)):
        functions = path_of(args.bootstrap, files, fail=fail)
        found = sorted({where for where, _ in functions} - PER_TURN)
        turn = sorted({where for where, _ in functions} & PER_TURN)
        print(f"{name}: {len(found)} files: {', '.join(found)}; per turn: {', '.join(turn)}")
        if args.functions:
            for where, function in sorted(functions):
                print(f"  {where}: {function}")


if __name__ == "__main__":
    main()

"""Handler outputs are at-least-once end to end, with a real `kafkaworker run` process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from tests.conftest import TopicFactory
from tests.support import ROOT, committed, produce, read_topic, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def start(bootstrap: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "kafkaworker", "run", "tests.apps.outputs:app"],
            cwd=ROOT,
            env={
                **os.environ,
                "KAFKAWORKER_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
                "KAFKAWORKER_COMMIT_INTERVAL": "0.2",
                **env,
            },
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def test_kill_9_between_handling_and_the_outputs_ack_loses_nothing(
    kafka_bootstrap: str, new_topic: TopicFactory, tmp_path: Path, kind: str
) -> None:
    source, output = new_topic(1), new_topic(1, prefix="out")
    total = 20
    produce(kafka_bootstrap, source, [orjson.dumps({"id": i}) for i in range(total)])
    starts = tmp_path / "starts.txt"
    env = {
        "OUTPUTS_TOPIC": source,
        "OUTPUTS_OUTPUT": output,
        "OUTPUTS_STARTS": str(starts),
        "KAFKAWORKER_KAFKA__CONSUMER": '{"session.timeout.ms": 6000}',
        "OUTPUTS_ASYNC": "1" if kind == "async" else "0",
    }
    # First run: outputs linger 5s in the producer, so handled inputs wait for their acks...
    first = start(
        kafka_bootstrap,
        {**env, "KAFKAWORKER_KAFKA__PRODUCER": '{"linger.ms": 5000}'},
        tmp_path / "first.log",
    )
    try:
        wait_until(lambda: starts.exists() and starts.read_text().strip(), 60, "an input handled")
    finally:
        first.kill()  # ...when kill -9 arrives
        first.wait()
    # Nothing past the start, which was committed when the partition was assigned.
    assert committed(kafka_bootstrap, "outputs", source, 1) == {0: 0}

    second = start(kafka_bootstrap, env, tmp_path / "second.log")
    try:
        wait_until(
            lambda: committed(kafka_bootstrap, "outputs", source, 1) == {0: total},
            60,
            "every input committed after the restart",
        )
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0
    outputs = [orjson.loads(r.value()) for r in read_topic(kafka_bootstrap, output, total)]
    assert {o["id"] for o in outputs} == set(range(total))

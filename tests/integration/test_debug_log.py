"""What `--log-level DEBUG` shows a person debugging a real worker: the assignment, pauses with
their reasons, commits with their positions, and a count of what was unfinished at exit."""

from __future__ import annotations

import re
import signal
from pathlib import Path

from tests.conftest import TopicFactory
from tests.support import WorkerProcess, committed, produce, read_records, wait_until


def test_debug_log_shows_assignment_pauses_with_reasons_and_commits(
    kafka_bootstrap: str, new_topic: TopicFactory, tmp_path: Path
) -> None:
    topic = new_topic(2)
    produce(kafka_bootstrap, topic, [b"x"] * 200, partitions=[i % 2 for i in range(200)])
    record = tmp_path / "records.txt"
    worker = WorkerProcess(
        kafka_bootstrap,
        topic,
        record,
        RECORDER_GROUP=f"g-{topic}",
        RECORDER_SLEEP="0.005",  # slow enough that backpressure pauses at once
        KAFKAWORKER_LOG_LEVEL="DEBUG",
        KAFKAWORKER_MAX_PENDING_PER_PARTITION="10",
    ).start()
    try:
        wait_until(lambda: len(read_records(record)) >= 200, 60, "every record handled")
        wait_until(
            lambda: committed(kafka_bootstrap, f"g-{topic}", topic, 2) == {0: 100, 1: 100},
            30,
            "offsets committed to the end",
        )
    finally:
        worker.signal(signal.SIGTERM)
        assert worker.wait(30) == 0, worker.output()[-3000:]
    out = worker.output()
    lines = out.splitlines()

    def first(event: str) -> str:
        found = [line for line in lines if re.search(rf"\b{re.escape(event)}\b", line)]
        assert found, f"no {event!r} line in:\n{out[-3000:]}"
        return found[0]

    assignment = first("assignment")
    assert "member_id=" in assignment and f"{topic}[0]" in assignment
    paused = first("paused")
    assert "reason=backpressure" in paused and "max_pending_per_partition=10" in paused
    assert f"{topic}[" in first("resumed")
    # The periodic commit and the shutdown's synchronous one, with positions as topic[p].
    assert re.search(rf"committed \(periodic\).*{re.escape(topic)}\[\d\]", out), out[-3000:]
    final = [line for line in lines if re.search(r"\] committed +handler", line)]
    assert final and f"'{topic}[0]': 100" in final[-1], out[-3000:]
    stopped = first("worker stopped")
    assert "unfinished=0" in stopped and "None" not in stopped
    # One timestamp format for the project's lines and librdkafka's.
    stamps = {re.sub(r"\d", "9", line.split(" ", 1)[0]) for line in lines if line[:1].isdigit()}
    assert len(stamps) == 1, stamps

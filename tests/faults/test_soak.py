"""Soak: steady keyed traffic for a while, with a second member restarted periodically (SIGTERM
and SIGKILL alternately), so the first one goes through a rebalance every restart. The first
member's memory, threads and open file descriptors must stay flat after warm-up; nothing is
lost; the group commits to the end of the log; exit 0 on SIGTERM.

SOAK_SECONDS sets the length: 120 in `make test` (CI), 1800 with `make soak` (not a
KAFKAWORKER_* variable: the worker refuses environment variables that match no setting).
"""

from __future__ import annotations

import os
import signal
import statistics
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import TopicFactory
from tests.support import (
    Feed,
    WorkerProcess,
    read_records,
    report_fault,
    wait_drained,
    wait_until,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

PARTITIONS = 4
SECONDS = float(os.environ.get("SOAK_SECONDS", "120"))
# Five restarts in `make test`'s 2 minutes; every 30 s in `make soak`'s 30.
RESTART_EVERY = min(30.0, SECONDS / 6)
SAMPLE_EVERY = 5.0


class Sample:
    def __init__(self, pid: int) -> None:
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
        fields = dict(line.split(":", 1) for line in status)
        self.rss_mb = int(fields["VmRSS"].split()[0]) / 1024
        self.threads = int(fields["Threads"])
        self.fds = len(os.listdir(f"/proc/{pid}/fd"))

    def __repr__(self) -> str:
        return f"({self.rss_mb:.0f} MB, {self.threads} threads, {self.fds} fds)"


@pytest.mark.timeout(SECONDS + 300)  # the suite's 300 s per test, beyond the soak itself
def test_a_long_steady_stream_with_member_restarts_stays_flat_and_loses_nothing(
    kafka_bootstrap: str, new_topic: TopicFactory, tmp_path: Path
) -> None:
    seconds = SECONDS
    topic = new_topic(PARTITIONS)
    group = f"g-{topic}"
    record = tmp_path / "records.txt"
    env = {"RECORDER_GROUP": group, "RECORDER_ORDERING": "key", "RECORDER_SLEEP": "0.0005"}
    steady = WorkerProcess(kafka_bootstrap, topic, record, **env).start()
    restarted = WorkerProcess(kafka_bootstrap, topic, record, **env).start()
    feed = Feed(kafka_bootstrap, topic, rate=400)
    samples: list[Sample] = []
    restarts = 0
    try:
        wait_until(
            lambda: steady.exited() or len(read_records(record)) >= 500, 60, "members working"
        )
        started = time.monotonic()
        next_restart = started + RESTART_EVERY
        while time.monotonic() - started < seconds:
            assert not steady.exited(), steady.output()[-3000:]
            samples.append(Sample(steady.pid))
            if time.monotonic() >= next_restart:
                if restarts % 2 == 0:
                    restarted.signal(signal.SIGTERM)
                    assert restarted.wait(60) == 0, restarted.output()[-3000:]
                else:
                    restarted.kill()
                restarted = WorkerProcess(kafka_bootstrap, topic, record, **env).start()
                restarts += 1
                next_restart = time.monotonic() + RESTART_EVERY
            time.sleep(SAMPLE_EVERY)  # the soak's length is the point: sampled as it goes
        feed.stop()
        wait_drained(
            kafka_bootstrap, topic, PARTITIONS, group=group, acked=feed.acked, record=record
        )
    finally:
        feed.stop()
        codes = []
        for member in (steady, restarted):
            member.signal(signal.SIGTERM)
            codes.append(member.wait(60))
    assert codes == [0, 0], steady.output()[-2000:] + restarted.output()[-2000:]
    assert restarts >= 2, restarts

    # Flat after warm-up (the first third: librdkafka's queues filled, first rebalances done):
    # the last third's median against the warm-up's end.
    third = max(1, len(samples) // 3)
    warm, late = samples[third - 1], samples[-third:]
    print(f"\nsoak samples (every {SAMPLE_EVERY:g} s): {samples}")
    assert statistics.median(s.rss_mb for s in late) - warm.rss_mb < 30, samples
    assert max(s.threads for s in late) <= warm.threads + 2, samples
    assert max(s.fds for s in late) <= warm.fds + 4, samples

    counts = Counter((r.partition, r.offset) for r in read_records(record))
    report_fault(
        f"soak: {seconds / 60:g} min steady stream, a member restarted every "
        f"{RESTART_EVERY:g} s ({restarts} restarts)",
        len(feed.acked),
        len(feed.acked - set(counts)),
        sum(n - 1 for n in counts.values() if n > 1),
        None,
    )
    assert feed.acked <= set(counts)

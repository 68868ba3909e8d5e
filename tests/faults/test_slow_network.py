"""A slow network: every byte between the worker (and the producer) and the broker goes
through a link that adds 100 ms each way and stalls a connection for 200-400 ms on 5% of its
chunks, as lost segments do to a TCP stream (tests/slow_link.py: no netem in this kernel).

The worker must keep its group membership (no session timeout, no partitions lost), handle
every acknowledged record, commit to the end of the log and exit 0 on SIGTERM.
"""

from __future__ import annotations

import signal
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from kafkaworker.testing.broker import Cluster
from kafkaworker.testing.jvm import free_port
from tests.slow_link import SlowLink
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


@pytest.fixture(scope="module")
def slow_broker() -> Iterator[tuple[Cluster, SlowLink]]:
    """A broker of its own that advertises the slow link's address, so clients reach it only
    through the link."""
    link_port, broker_port = free_port(), free_port()
    link = SlowLink(link_port, broker_port).start()
    cluster = Cluster(
        1,
        heap="512m",
        port=broker_port,
        properties={"advertised.listeners": f"PLAINTEXT://127.0.0.1:{link_port}"},
    )
    try:
        cluster.start()
        yield cluster, link
    finally:
        cluster.cleanup()
        link.close()


def test_a_slow_lossy_link_loses_nothing_and_keeps_the_group(
    slow_broker: tuple[Cluster, SlowLink], tmp_path: Path
) -> None:
    cluster, link = slow_broker
    topic = f"slow-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    admin.create_topics([NewTopic(topic, PARTITIONS)])[topic].result(30)
    record = tmp_path / "records.txt"
    worker = WorkerProcess(
        cluster.bootstrap,
        topic,
        record,
        RECORDER_GROUP=f"g-{topic}",
        RECORDER_ORDERING="key",
        RECORDER_SLEEP="0.0005",
    ).start()
    feed = Feed(cluster.bootstrap, topic, rate=500)
    try:
        wait_until(
            lambda: worker.exited() or len(read_records(record)) >= 8000,
            120,
            "records handled through the slow link",
            0.5,
        )
        assert not worker.exited(), worker.output()[-3000:]
        feed.stop()
        wait_drained(
            cluster.bootstrap,
            topic,
            PARTITIONS,
            group=f"g-{topic}",
            acked=feed.acked,
            record=record,
        )
    finally:
        worker.signal(signal.SIGTERM)
        code = worker.wait(60)
        feed.stop()
    output = worker.output()
    assert code == 0, output[-3000:]
    assert link.stalls > 0 and link.chunks > 0  # the link did slow things down
    # Membership held: latency and stalls are far below the session timeout.
    assert "partitions lost" not in output, output[-3000:]
    counts = Counter((r.partition, r.offset) for r in read_records(record))
    report_fault(
        "slow network: +100 ms each way, 5% of chunks stalled 200-400 ms",
        len(feed.acked),
        len(feed.acked - set(counts)),
        sum(n - 1 for n in counts.values() if n > 1),
        None,
    )

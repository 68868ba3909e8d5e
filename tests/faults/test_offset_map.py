"""The offset map across members and its limit, with real `kafkaworker run` processes: a
rebalance hands the map of what is finished above the committed position to the new owner,
which runs none of it again; and a map too long for the commit's metadata leaves the plain
position (counted), so a crash repeats more, and loses nothing."""

from __future__ import annotations

import random
import socket
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import TopicFactory
from tests.faults.test_delivery import keyed, stop
from tests.metrics_support import samples
from tests.support import (
    WorkerProcess,
    commits,
    committed,
    end_offsets,
    produce,
    read_records,
    report_fault,
    wait_until,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


@pytest.mark.parametrize("protocol", ["classic", "consumer"])
def test_a_member_joining_is_handed_the_map_and_runs_nothing_finished_again(
    kafka_bootstrap: str, new_topic: TopicFactory, tmp_path: Path, protocol: str
) -> None:
    """Key order with one slow key per partition: each partition's committed position stays
    near that key's next message while the other keys run far ahead. A second member joins
    mid-stream and takes partitions over: what the first finished before letting them go (its
    revoke commits the map) must not run again."""
    topic = new_topic(4)
    group = f"g-{topic}"
    expected = keyed(kafka_bootstrap, topic, 4, 4000, keys=40)
    record = tmp_path / "records.txt"
    env = {
        "RECORDER_GROUP": group,
        "RECORDER_ORDERING": "key",
        "RECORDER_SLEEP": "0.002",
        # k0..k3, one on each partition: 100 messages each, 50 ms apiece.
        "RECORDER_SLOW_KEYS": "k0,k1,k2,k3",
        "RECORDER_SLOW_SLEEP": "0.05",
        "KAFKAWORKER_KAFKA__GROUP_PROTOCOL": protocol,
    }
    if protocol == "consumer":
        env["KAFKAWORKER_KAFKA__CONSUMER"] = "{}"
    a = WorkerProcess(kafka_bootstrap, topic, record, **env).start()
    workers = [a]
    try:
        wait_until(lambda: len(read_records(record)) >= 1500, 60, "A well into the backlog")
        b = WorkerProcess(kafka_bootstrap, topic, record, **env).start()
        workers.append(b)
        wait_until(
            lambda: sum(r.pid == b.pid for r in read_records(record)) >= 100,
            60,
            "B handling the partitions it was given",
        )
        wait_until(
            lambda: {(r.partition, r.offset) for r in read_records(record)} >= expected,
            120,
            "every record",
        )
        ends = end_offsets(kafka_bootstrap, topic, 4)
        wait_until(
            lambda: committed(kafka_bootstrap, group, topic, 4) == ends,
            30,
            "offsets committed to the end",
        )
    finally:
        for worker in workers:
            assert stop(worker) == 0, worker.output()[-3000:]
    records = read_records(record)
    assert {(r.partition, r.offset) for r in records} == expected
    finished_by_a = {(r.partition, r.offset) for r in records if r.pid == a.pid}
    again = sorted((r.partition, r.offset) for r in records if r.pid == b.pid)
    moved = {p for p, _ in again}
    assert moved, "B took no partition over"
    repeated = [key for key in again if key in finished_by_a]
    assert repeated == [], f"{len(repeated)} finished by A ran again on B: {repeated[:20]}"
    skipped = sum("finished_above_committed" in line for line in b.output().splitlines())
    assert skipped, "B was handed no offset map"  # the test is about the map
    report_fault(
        f"a member joins under key order, a slow key per partition ({protocol}): the offset "
        "map moves with the partitions",
        len(expected),
        0,
        len(records) - len(expected),
        None,
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize("limit", ["setting", "broker"])
def test_a_map_too_large_for_the_metadata_commits_the_plain_position_and_loses_nothing(
    kafka_bootstrap: str, new_topic: TopicFactory, tmp_path: Path, limit: str
) -> None:
    """Half of 30,000 records of one partition, at random, belong to a key held back: the
    others finish, and the offsets finished above the position (~5,000 characters of map) do
    not fit the brokers' offset.metadata.max.bytes (4,096). `setting`: the worker knows the
    limit (the default offset_metadata_max_bytes) and leaves the map out; `broker`: told a
    higher one, it sends the map, the broker refuses it (OFFSET_METADATA_TOO_LARGE), and it
    commits again without. Either way the plain position, counted; kill -9 and a restart
    then repeat what finished above it, and nothing is lost."""
    topic = new_topic(1)
    group = f"g-{topic}"
    total = 30_000
    rng = random.Random(31)
    keys = [b"held" if rng.random() < 0.5 else b"f%d" % (i % 50) for i in range(total)]
    produce(kafka_bootstrap, topic, [b"%d" % i for i in range(total)], keys=keys)
    first_held = keys.index(b"held")
    record, go = tmp_path / "records.txt", tmp_path / "go"
    port = free_port()
    env = {
        "RECORDER_GROUP": group,
        "RECORDER_ORDERING": "key",
        "RECORDER_HOLD_KEY": "held",
        "RECORDER_HOLD_FILE": str(go),
        "KAFKAWORKER_MAX_PENDING": "50000",
        "KAFKAWORKER_MAX_PENDING_PER_PARTITION": "50000",
        "KAFKAWORKER_POLL_BATCH": "10000",
        "KAFKAWORKER_METRICS__PORT": str(port),
    }
    if limit == "broker":
        env["KAFKAWORKER_OFFSET_METADATA_MAX_BYTES"] = "20000"
    a = WorkerProcess(kafka_bootstrap, topic, record, **env).start()
    try:

        def fallbacks() -> float:
            found = samples(port).get("kafkaworker_offset_map_fallbacks_total", [])
            return sum(value for _, value in found)

        wait_until(lambda: len(read_records(record)) >= total // 2 - 200, 90, "the free keys done")
        wait_until(fallbacks, 30, "a commit without its map, counted")
        wait_until(
            lambda: commits(kafka_bootstrap, group, topic, 1)[0] == (first_held, None),
            30,
            "the plain position committed",
        )
    finally:
        a.kill()
    if limit == "broker":
        assert "OFFSET_METADATA_TOO_LARGE" in a.output(), a.output()[-3000:]
    finished_by_a = len(read_records(record))
    go.write_text("")
    env.pop("KAFKAWORKER_METRICS__PORT")
    b = WorkerProcess(kafka_bootstrap, topic, record, **env).start()
    try:
        wait_until(
            lambda: {r.offset for r in read_records(record)} == set(range(total)),
            120,
            "every record after the restart",
        )
        wait_until(
            lambda: committed(kafka_bootstrap, group, topic, 1) == {0: total},
            30,
            "offsets committed to the end",
        )
    finally:
        assert stop(b) == 0, b.output()[-3000:]
    counts = Counter(r.offset for r in read_records(record))
    assert set(counts) == set(range(total))  # nothing lost
    duplicates = sum(n - 1 for n in counts.values())
    # The plain position: everything A finished above it ran again.
    assert duplicates >= finished_by_a - first_held - 1, (duplicates, finished_by_a)
    report_fault(
        f"offset map too large for the metadata ({limit} limit): plain position, kill -9",
        total,
        0,
        duplicates,
        None,
    )

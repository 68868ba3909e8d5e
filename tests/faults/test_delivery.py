"""Delivery under failure, with real `kafkaworker run` processes: kill -9, SIGTERM, rebalances.

Every test counts what the recorder app finished (tests/apps/recorder.py) against what was
produced: nothing may be missing, and where the runtime promises it, nothing may repeat.
"""

from __future__ import annotations

import itertools
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kafkaworker.runtime.poll import offset_map
from tests.conftest import TopicFactory
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


def produced(bootstrap: str, topic: str, partitions: int, total: int) -> set[tuple[int, int]]:
    produce(
        bootstrap,
        topic,
        [b"%d" % i for i in range(total)],
        partitions=[i % partitions for i in range(total)],
    )
    return {(i % partitions, i // partitions) for i in range(total)}


def handled(record: Path) -> set[tuple[int, int]]:
    return {(r.partition, r.offset) for r in read_records(record)}


def stop(worker: WorkerProcess, timeout: float = 45) -> int:
    worker.signal(signal.SIGTERM)
    try:
        return worker.wait(timeout)
    except Exception:
        worker.kill()
        raise


def keyed(
    bootstrap: str, topic: str, partitions: int, total: int, keys: int
) -> set[tuple[int, int]]:
    """`total` records with `keys` keys, each key on one partition (key j on j % partitions)."""
    produce(
        bootstrap,
        topic,
        [b"%d" % i for i in range(total)],
        keys=[b"k%d" % (i % keys) for i in range(total)],
        partitions=[i % keys % partitions for i in range(total)],
    )
    counts = Counter(i % keys % partitions for i in range(total))
    return {(p, o) for p, n in counts.items() for o in range(n)}


def covered(bootstrap: str, group: str, topic: str, partitions: int) -> set[tuple[int, int]]:
    """The offsets the group's commits say are finished: below each committed position, and
    those its offset map lists above it."""
    done: set[tuple[int, int]] = set()
    for partition, (position, metadata) in commits(bootstrap, group, topic, partitions).items():
        done.update((partition, o) for o in range(max(position, 0)))
        done.update((partition, o) for o in offset_map.decode(metadata, position))
    return done


@dataclass
class Kill:
    """What one kill -9 left behind: messages in flight (started, not finished), finished and
    not covered by the commits read just after the kill, and what ran again afterwards."""

    pid: int
    in_flight: int
    uncommitted: set[tuple[int, int]]
    again: set[tuple[int, int]] = field(default_factory=set)


def test_kill_9_at_several_points_then_restart_repeats_only_uncommitted_work(
    kafka_bootstrap: str, new_topic: TopicFactory, tmp_path: Path, kind: str
) -> None:
    """Key order (200 keys), a backlog of 4,000 records on 4 partitions, kill -9 three times
    mid-stream: nothing lost, and what runs again after each kill is only what the killed
    member had finished and not committed (its position and its offset map): nothing a commit
    covered runs twice."""
    topic = new_topic(4)
    group = f"g-{topic}"
    expected = keyed(kafka_bootstrap, topic, 4, 4000, keys=200)
    record, starts = tmp_path / "records.txt", tmp_path / "starts.txt"
    env = {
        "RECORDER_GROUP": group,
        "RECORDER_SLEEP": "0.001",
        "RECORDER_ORDERING": "key",
        "RECORDER_STARTS": str(starts),
        "RECORDER_ASYNC": "1" if kind == "async" else "0",
        # At most 100 commits a second while offsets move (the default commit_interval
        # commits at most 10): what a kill repeats is what finished since the last one.
        "KAFKAWORKER_COMMIT_INTERVAL": "0.01",
    }

    kills: list[Kill] = []
    for kill_after in (300, 1300, 2600):
        worker = WorkerProcess(kafka_bootstrap, topic, record, **env).start()
        try:
            wait_until(
                lambda n=kill_after: len(read_records(record)) >= n,
                90,
                f"{kill_after} records before kill -9",
            )
        finally:
            worker.kill()  # SIGKILL: no drain, no commit, no leaving the group
        done = covered(kafka_bootstrap, group, topic, 4)
        finished = {(r.partition, r.offset) for r in read_records(record) if r.pid == worker.pid}
        started = {
            (int(p), int(o))
            for pid, p, o in (line.split() for line in starts.read_text().splitlines())
            if int(pid) == worker.pid
        }
        kills.append(Kill(worker.pid, len(started - finished), finished - done))

    worker = WorkerProcess(kafka_bootstrap, topic, record, **env).start()
    try:
        wait_until(lambda: handled(record) >= expected, 120, "every message after restarts")
        wait_until(
            lambda: (
                committed(kafka_bootstrap, group, topic, 4)
                == end_offsets(kafka_bootstrap, topic, 4)
            ),
            30,
            "offsets committed to the end",
        )
    finally:
        assert stop(worker) == 0, worker.output()[-3000:]
    records = read_records(record)
    assert {(r.partition, r.offset) for r in records} == expected  # nothing lost or invented
    # Each repeat is charged to the kill of the member that handled it last before.
    by_pid = {kill.pid: kill for kill in kills}
    last: dict[tuple[int, int], int] = {}
    for r in records:
        previous = last.get((r.partition, r.offset))
        if previous is not None:
            by_pid[previous].again.add((r.partition, r.offset))
        last[(r.partition, r.offset)] = r.pid
    for kill in kills:
        # Only what the commits did not cover runs again (not even the in-flight messages,
        # which never finished, count here: they run for the first time).
        assert kill.again <= kill.uncommitted, sorted(kill.again - kill.uncommitted)[:20]
    duplicates = len(records) - len(expected)
    assert duplicates == sum(len(kill.again) for kill in kills)
    # Before the offset map these kills repeated ~1,100 (any order) to ~1,700 (key order);
    # now some tens (sync 37-82, async 68-132 in 5 runs each: about a tenth of 1,100). What a
    # kill repeats is the rate times the commit's latency, which a loaded 2-core machine
    # stretches: the gate is a fifth, the exact bound per kill is the assertion above.
    assert duplicates <= 1100 / 5, duplicates
    print(
        f"\n{kind}: duplicates {duplicates}; per kill (again, in flight, finished and not "
        f"committed): {[(len(k.again), k.in_flight, len(k.uncommitted)) for k in kills]}"
    )
    report_fault(
        f"worker killed (kill -9) three times, key order, {kind} handler",
        len(expected),
        0,
        duplicates,
        None,
        per_kill=[(len(k.again), k.in_flight, len(k.uncommitted)) for k in kills],
    )


def test_sigterm_drains_in_flight_exits_0_and_a_restart_repeats_nothing(
    kafka_bootstrap: str, new_topic: TopicFactory, tmp_path: Path, kind: str
) -> None:
    topic = new_topic(4)
    expected = produced(kafka_bootstrap, topic, 4, 40)
    record, starts = tmp_path / "records.txt", tmp_path / "starts.txt"
    env = {
        "RECORDER_GROUP": f"g-{topic}",
        "RECORDER_SLEEP": "1.5",
        "RECORDER_STARTS": str(starts),
        "KAFKAWORKER_SHUTDOWN_TIMEOUT": "10",
        "RECORDER_ASYNC": "1" if kind == "async" else "0",
    }

    first = WorkerProcess(kafka_bootstrap, topic, record, **env).start()
    wait_until(lambda: len(read_records(record)) >= 4, 60, "a first round of slow messages")
    wait_until(lambda: len(starts.read_text().splitlines()) >= 8, 10, "the second round started")
    in_flight = {tuple(map(int, line.split()[1:])) for line in starts.read_text().splitlines()}
    signalled = time.monotonic()
    assert stop(first) == 0, first.output()[-3000:]
    assert time.monotonic() - signalled < 10
    # What was in flight at the signal was finished before exit, not abandoned.
    assert in_flight <= handled(record)

    second = WorkerProcess(kafka_bootstrap, topic, record, **env).start()
    try:
        wait_until(lambda: handled(record) >= expected, 90, "the rest after the restart")
    finally:
        assert stop(second) == 0, second.output()[-3000:]
    counts = Counter((r.partition, r.offset) for r in read_records(record))
    assert set(counts) == expected
    assert [key for key, n in counts.items() if n > 1] == []


def test_a_second_signal_exits_at_once_without_committing_unfinished_work(
    kafka_bootstrap: str, new_topic: TopicFactory, tmp_path: Path
) -> None:
    topic = new_topic(1)
    produced(kafka_bootstrap, topic, 1, 3)
    record, starts = tmp_path / "records.txt", tmp_path / "starts.txt"
    worker = WorkerProcess(
        kafka_bootstrap,
        topic,
        record,
        RECORDER_GROUP=f"g-{topic}",
        RECORDER_SLEEP="60",
        RECORDER_STARTS=str(starts),
        RECORDER_CONCURRENCY="1",
    ).start()
    wait_until(lambda: starts.exists() and starts.read_text(), 60, "the first message started")
    worker.signal(signal.SIGTERM)
    # The first signal's drain is under way (it would wait 60s for the handler)...
    wait_until(lambda: "shutting down" in worker.output(), 10, "the graceful shutdown to begin")
    worker.signal(signal.SIGTERM)  # ...and the second one cuts it short
    assert worker.wait(10) == 128 + signal.SIGTERM
    assert read_records(record) == []
    # Nothing past the start, which was committed when the partition was assigned.
    assert committed(kafka_bootstrap, f"g-{topic}", topic, 1) == {0: 0}


@pytest.mark.parametrize("protocol", ["classic", "consumer"])
def test_members_join_and_leave_mid_stream_without_loss_or_overlap(
    kafka_bootstrap: str, new_topic: TopicFactory, tmp_path: Path, protocol: str
) -> None:
    topic = new_topic(6)
    expected = produced(kafka_bootstrap, topic, 6, 6000)
    record = tmp_path / "records.txt"
    env = {
        "RECORDER_GROUP": f"g-{topic}",
        "RECORDER_SLEEP": "0.004",
        "RECORDER_CONCURRENCY": "2",
        "KAFKAWORKER_KAFKA__GROUP_PROTOCOL": protocol,
    }
    if protocol == "consumer":
        env["KAFKAWORKER_KAFKA__CONSUMER"] = "{}"  # KIP-848: session timeouts are broker-side
    a = WorkerProcess(kafka_bootstrap, topic, record, **env).start()
    b = WorkerProcess(kafka_bootstrap, topic, record, **env).start()
    workers = [a, b]
    try:
        # Both must be mid-stream: under KIP-848 the second member gets partitions only after
        # a heartbeat or two, and B alone can handle the first hundreds meanwhile.
        wait_until(
            lambda: all(sum(r.pid == w.pid for r in read_records(record)) >= 50 for w in (a, b)),
            60,
            "A and B processing",
        )
        c = WorkerProcess(kafka_bootstrap, topic, record, **env).start()
        workers.append(c)
        wait_until(
            lambda: sum(r.pid == c.pid for r in read_records(record)) >= 50,
            60,
            "C taking partitions over",
        )
        assert stop(a) == 0, a.output()[-3000:]
        workers.remove(a)
        wait_until(lambda: handled(record) >= expected, 120, "every message with B and C")
    finally:
        for worker in workers:
            assert stop(worker) == 0, worker.output()[-3000:]

    records = read_records(record)
    assert {(r.partition, r.offset) for r in records} == expected
    assert len({r.pid for r in records}) == 3
    report_fault(
        f"members join and leave mid-stream, {protocol} protocol",
        len(expected),
        0,
        len(records) - len(expected),
        None,
    )
    # No partition is ever worked on by two members at once: its intervals never overlap.
    for partition in range(6):
        spans = sorted(
            (r.started, r.finished, r.pid, r.offset) for r in records if r.partition == partition
        )
        for (_, end, pid, offset), (start, _, next_pid, next_offset) in itertools.pairwise(spans):
            assert end <= start, (
                f"partition {partition}: offset {offset} (pid {pid}) overlapped offset "
                f"{next_offset} (pid {next_pid})"
            )


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def test_memory_stays_flat_over_a_long_stream(
    kafka_bootstrap: str, new_topic: TopicFactory, tmp_path: Path
) -> None:
    topic = new_topic(4)
    total = 300_000
    produce(
        kafka_bootstrap, topic, [b'{"id": %d, "pad": "%s"}' % (i, b"x" * 80) for i in range(total)]
    )
    group = f"g-{topic}"
    worker = WorkerProcess(kafka_bootstrap, topic, Path("/dev/null"), RECORDER_GROUP=group)
    worker.log = tmp_path / "worker.log"
    worker.start()
    samples: list[tuple[int, float]] = []
    try:

        def progress() -> int:
            return sum(max(0, o) for o in committed(kafka_bootstrap, group, topic, 4).values())

        for share in (0.2, 0.4, 0.6, 0.8, 1.0):
            done = wait_until(
                lambda s=share: (n := progress()) >= s * total and n,
                180,
                f"{share:.0%} of the stream",
                step=0.2,
            )
            samples.append((done, rss_mb(worker.pid)))
    finally:
        assert stop(worker) == 0, worker.output()[-3000:]
    # After warm-up (librdkafka's fetch queue filled), RSS must not grow with messages handled.
    warm = samples[0][1]
    print(f"\nRSS by messages committed (MB): {samples}")
    assert max(rss for _, rss in samples) - warm < 40, samples

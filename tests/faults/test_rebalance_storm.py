"""A rebalance storm: 20 join/leave cycles while four members process a keyed stream, with both
group protocols. Each cycle starts a member and, once it handles records, stops an old one,
alternately with SIGTERM (it drains and leaves) and SIGKILL (it vanishes; its partitions move
when its session times out).

Counted: every record the producer had acknowledged is handled; no partition is worked on by
two members at the same time (per partition, a record never starts before every earlier-
started record of another member finished); per key, offsets increase within each member's
tenure of the partition; the members left exit 0 on SIGTERM and the group committed to the
end of the log.
"""

from __future__ import annotations

import itertools
import signal
import time
from collections import defaultdict
from pathlib import Path

import pytest

from tests.conftest import TopicFactory
from tests.support import (
    Feed,
    Record,
    WorkerProcess,
    read_records,
    report_fault,
    wait_drained,
    wait_until,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

PARTITIONS = 8
MEMBERS = 4
CYCLES = 20


@pytest.mark.parametrize("protocol", ["classic", "consumer"])
def test_twenty_join_leave_cycles_lose_nothing_and_never_overlap(
    kafka_bootstrap: str, new_topic: TopicFactory, tmp_path: Path, protocol: str
) -> None:
    topic = new_topic(PARTITIONS)
    group = f"g-{topic}"
    record = tmp_path / "records.txt"
    env = {
        "RECORDER_GROUP": group,
        "RECORDER_ORDERING": "key",
        "RECORDER_CONCURRENCY": "4",
        "RECORDER_SLEEP": "0.002",
        "KAFKAWORKER_KAFKA__GROUP_PROTOCOL": protocol,
    }
    if protocol == "consumer":
        env["KAFKAWORKER_KAFKA__CONSUMER"] = "{}"  # KIP-848: session timeouts are broker-side
    feed = Feed(kafka_bootstrap, topic, rate=500)
    members = [WorkerProcess(kafka_bootstrap, topic, record, **env).start() for _ in range(MEMBERS)]
    everyone = list(members)
    try:
        wait_until(lambda: len(read_records(record)) >= 300, 60, "the first members working")
        for cycle in range(CYCLES):
            joining = WorkerProcess(kafka_bootstrap, topic, record, **env).start()
            everyone.append(joining)
            members.append(joining)
            # Joined and working; a member may be given nothing for a while (eight
            # partitions, five members): then it is stopped later having handled nothing.
            _await_work(joining, record, 15)
            leaving = members.pop(0)
            if cycle % 2 == 0:
                leaving.signal(signal.SIGTERM)
                assert leaving.wait(60) == 0, leaving.output()[-3000:]
            else:
                leaving.kill()
            assert not any(m.exited() for m in members), [m.output()[-2000:] for m in members]
        feed.stop()
        wait_drained(
            kafka_bootstrap, topic, PARTITIONS, group=group, acked=feed.acked, record=record
        )
    finally:
        for member in everyone:
            if not member.exited():
                member.signal(signal.SIGTERM)
        codes = [m.wait(60) for m in members]
        for member in everyone:
            member.kill()
    assert codes == [0] * len(members), [m.output()[-2000:] for m in members]

    records = read_records(record)
    handled = [(r.partition, r.offset) for r in records]
    assert not overlaps(records)
    assert not out_of_order(records)
    report_fault(
        f"rebalance storm: {CYCLES} join/leave cycles (SIGTERM and SIGKILL), "
        f"{MEMBERS} members, {protocol} protocol",
        len(feed.acked),
        len(feed.acked - set(handled)),
        len(handled) - len(set(handled)),
        None,
    )


def _await_work(member: WorkerProcess, record: Path, timeout: float) -> None:
    """Wait until the member handled a record, or for `timeout` (it may be given nothing)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert not member.exited(), member.output()[-3000:]
        if any(r.pid == member.pid for r in read_records(record)):
            return
        time.sleep(0.2)


def overlaps(records: list[Record]) -> list[str]:
    """Records that started while a record of the same partition, handled by another member,
    had not finished."""
    found = []
    by_partition: dict[int, list[Record]] = defaultdict(list)
    for r in records:
        by_partition[r.partition].append(r)
    for partition, spans in by_partition.items():
        latest_end: dict[int, tuple[float, int]] = {}  # pid -> (latest finish, its offset)
        for r in sorted(spans, key=lambda r: r.started):
            for pid, (end, offset) in latest_end.items():
                if pid != r.pid and end > r.started:
                    found.append(
                        f"partition {partition}: offset {r.offset} (pid {r.pid}) started "
                        f"{end - r.started:.3f}s before offset {offset} (pid {pid}) finished"
                    )
            end, _ = latest_end.get(r.pid, (0.0, -1))
            if r.finished >= end:
                latest_end[r.pid] = (r.finished, r.offset)
    return found[:10]


def out_of_order(records: list[Record]) -> list[str]:
    """Keys whose offsets went backwards within one member's tenure of a partition: a run of
    records of the partition, by start time, handled by one member, until it handles an
    offset again (the partition was revoked and given back to it, and delivery resumed from
    the committed position: at-least-once redelivery, not disorder)."""
    found = []
    by_partition: dict[int, list[Record]] = defaultdict(list)
    for r in records:
        by_partition[r.partition].append(r)
    for partition, spans in by_partition.items():
        ordered = sorted(spans, key=lambda r: r.started)
        for pid, tenure in itertools.groupby(ordered, key=lambda r: r.pid):
            last: dict[str, int] = {}
            seen: set[int] = set()
            for r in tenure:
                if r.offset in seen:  # delivered again: a new tenure
                    last.clear()
                    seen.clear()
                seen.add(r.offset)
                if r.key in last and r.offset <= last[r.key]:
                    found.append(
                        f"partition {partition}, key {r.key}: offset {r.offset} after "
                        f"{last[r.key]} (pid {pid})"
                    )
                last[r.key] = r.offset
    return found[:10]

"""Static membership (kafka.group_instance_id, KIP-345): a member killed with kill -9 and
started again under the same name within the session timeout takes its partitions back at
once, and the other member sees no rebalance at all; with both group protocols. Without a
static name, the restarted member is a new one: it waits until the dead one's session times
out (30 s here) and both members rebalance."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

from tests.conftest import TopicFactory
from tests.support import (
    Feed,
    WorkerProcess,
    commits,
    read_records,
    report_fault,
    wait_drained,
    wait_until,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

PARTITIONS = 4
SESSION_MS = 30_000  # far longer than the restart takes: a new member would wait this out


def rebalance_lines(worker: WorkerProcess) -> list[str]:
    return [
        line
        for line in worker.output().splitlines()
        if "partitions assigned" in line
        or "partitions revoked" in line
        or "partitions lost" in line
    ]


def assigned(worker: WorkerProcess) -> set[int]:
    """The partitions the worker holds after the rebalance callbacks it logged."""
    held: set[int] = set()
    for line in rebalance_lines(worker):
        listed = {int(p) for p in re.findall(r"\[(\d+)\]'", line.split("partitions=", 1)[1])}
        if "assigned" in line:
            held |= listed
        else:
            held -= listed
    return held


def set_session_timeout(bootstrap: str, group: str, millis: int) -> None:
    """A KIP-848 group's session timeout (the group's config, not the member's)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    entry = ConfigEntry(
        "consumer.session.timeout.ms", str(millis), incremental_operation=AlterConfigOpType.SET
    )
    resource = ConfigResource(ConfigResource.Type.GROUP, group, incremental_configs=[entry])
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(30)


def stop_all(workers: list[WorkerProcess]) -> None:
    for worker in workers:
        if not worker.exited():
            worker.signal(signal.SIGTERM)
    for worker in workers:
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()


@pytest.mark.parametrize(
    ("protocol", "how"), [("classic", "kill"), ("classic", "term"), ("consumer", "term")]
)
def test_a_static_member_restarted_within_its_session_takes_its_partitions_back_at_once(
    kafka_bootstrap: str, new_topic: TopicFactory, tmp_path: Path, protocol: str, how: str
) -> None:
    """kill -9 or SIGTERM (drained, committed: a static member does not leave its group),
    then the same name again."""
    topic = new_topic(PARTITIONS)
    group = f"g-{topic}"
    feed = Feed(kafka_bootstrap, topic, rate=400)
    record = tmp_path / "records.txt"
    env = {
        "RECORDER_GROUP": group,
        "RECORDER_SLEEP": "0.003",
        "RECORDER_ORDERING": "key",
        "KAFKAWORKER_KAFKA__GROUP_PROTOCOL": protocol,
        "KAFKAWORKER_KAFKA__CONSUMER": json.dumps(
            {"session.timeout.ms": SESSION_MS, "heartbeat.interval.ms": 1000}
        ),
    }
    if protocol == "consumer":
        # KIP-848: the session timeout is the group's, set through the admin API.
        env["KAFKAWORKER_KAFKA__CONSUMER"] = "{}"
        set_session_timeout(kafka_bootstrap, group, SESSION_MS)
    a = WorkerProcess(
        kafka_bootstrap, topic, record, **env, KAFKAWORKER_KAFKA__GROUP_INSTANCE_ID="a"
    ).start()
    b = WorkerProcess(
        kafka_bootstrap, topic, record, **env, KAFKAWORKER_KAFKA__GROUP_INSTANCE_ID="b"
    ).start()
    workers = [a, b]
    try:
        wait_until(
            lambda: all(sum(r.pid == w.pid for r in read_records(record)) >= 50 for w in (a, b)),
            60,
            "A and B processing",
        )
        # Settled: each holds two partitions (KIP-848 assigns in steps).
        wait_until(lambda: len(assigned(a)) == len(assigned(b)) == 2, 30, "two partitions each")
        held_by_a = assigned(a)
        # Commits refused while the group rebalanced (REBALANCE_IN_PROGRESS) are sent again
        # at the next interval: a kill before then repeats everything finished since the
        # rebalance began (measured: 155 and 716). The restart, not that, is under test.
        settled = commits(kafka_bootstrap, group, topic, PARTITIONS)
        wait_until(
            lambda: all(
                commits(kafka_bootstrap, group, topic, PARTITIONS)[p] != settled[p]
                for p in held_by_a
            ),
            30,
            "A committing again after the rebalance",
        )
        b_before = rebalance_lines(b)
        stopped_at = time.monotonic()
        if how == "kill":
            a.kill()
        else:
            a.signal(signal.SIGTERM)
            assert a.wait(30) == 0, a.output()[-3000:]
        again = WorkerProcess(
            kafka_bootstrap, topic, record, **env, KAFKAWORKER_KAFKA__GROUP_INSTANCE_ID="a"
        ).start()
        workers.append(again)
        wait_until(
            lambda: any(r.pid == again.pid for r in read_records(record)),
            SESSION_MS / 1000 + 30,
            "the restarted member handling records",
        )
        recovery = time.monotonic() - stopped_at
        assert assigned(again) == held_by_a, again.output()[-3000:]
        time.sleep(3)  # a rebalance the restart caused would reach B within a heartbeat or two
        assert rebalance_lines(b) == b_before, b.output()[-3000:]
        feed.stop()
        wait_drained(
            kafka_bootstrap, topic, PARTITIONS, group=group, acked=feed.acked, record=record
        )
    finally:
        feed.stop()
        stop_all(workers)
    counts = Counter((r.partition, r.offset) for r in read_records(record))
    assert feed.acked <= set(counts)  # nothing lost
    print(f"\n{protocol}, {how}: resumed {recovery:.1f} s after the stop")
    assert recovery < 10, f"took {recovery:.1f} s: the restarted member waited for a rebalance"
    stopped = "killed (kill -9)" if how == "kill" else "stopped (SIGTERM)"
    report_fault(
        f"static member {stopped} and restarted within its session, {protocol} protocol",
        len(feed.acked),
        len(feed.acked - set(counts)),
        sum(n - 1 for n in counts.values()),
        recovery,
    )


def test_a_static_member_killed_under_kip848_gets_its_name_back_when_its_session_ends(
    kafka_bootstrap: str, new_topic: TopicFactory, tmp_path: Path
) -> None:
    """KIP-848 frees a static name only when its member leaves: started again after kill -9,
    the member is refused (UNRELEASED_INSTANCE_ID, fatal to librdkafka's consumer) until the
    killed one's session is over. The worker replaces the failed consumer every few seconds
    and joins as soon as the broker lets it (not after join_timeout, 60 s); nothing lost."""
    topic = new_topic(PARTITIONS)
    group = f"g-{topic}"
    session = 10.0
    set_session_timeout(kafka_bootstrap, group, int(session * 1000))
    feed = Feed(kafka_bootstrap, topic, rate=400)
    record = tmp_path / "records.txt"
    env = {
        "RECORDER_GROUP": group,
        "RECORDER_SLEEP": "0.003",
        "KAFKAWORKER_KAFKA__GROUP_PROTOCOL": "consumer",
        "KAFKAWORKER_KAFKA__CONSUMER": "{}",
        "KAFKAWORKER_KAFKA__GROUP_INSTANCE_ID": "a",
    }
    a = WorkerProcess(kafka_bootstrap, topic, record, **env).start()
    workers = [a]
    try:
        wait_until(lambda: sum(r.pid == a.pid for r in read_records(record)) >= 50, 60, "A")
        a.kill()
        killed_at = time.monotonic()
        again = WorkerProcess(kafka_bootstrap, topic, record, **env).start()
        workers.append(again)
        wait_until(
            lambda: any(r.pid == again.pid for r in read_records(record)),
            session + 20,
            "the restarted member handling records",
        )
        recovery = time.monotonic() - killed_at
        assert "the consumer failed" in again.output()  # refused while the name was held
        feed.stop()
        wait_drained(
            kafka_bootstrap, topic, PARTITIONS, group=group, acked=feed.acked, record=record
        )
    finally:
        feed.stop()
        stop_all(workers)
    print(f"\nKIP-848, kill -9: resumed {recovery:.1f} s after the kill (session {session} s)")
    counts = Counter((r.partition, r.offset) for r in read_records(record))
    assert feed.acked <= set(counts)

"""The poll side and the executors together over the in-memory source, with a def handler on
worker threads and an async def one on the event loop: ordering under many threads and
coroutines, commits that never pass unfinished work, revokes, lost partitions and shutdown.
No broker: Kafka's own behaviour is tested against a real one in tests/integration and
tests/faults."""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Any

import pytest

from kafkaworker import Message
from kafkaworker.handlers import Ordering
from kafkaworker.runtime.source import Partition
from kafkaworker.runtime.source.memory import MemorySource
from tests.support import as_kind, wait_until
from tests.unit.runtime_support import committed_to_the_end, running, spec_for

P0, P1, P2, P3 = (Partition("t", p) for p in range(4))


@pytest.mark.parametrize("ordering", ["partition", "key"])
def test_lanes_keep_their_order_under_many_threads(ordering: Ordering, kind: str) -> None:
    source = MemorySource({"t": 4})
    for i in range(2000):
        source.broker.append("t", b"%d" % i, key=b"k%d" % (i % 20), partition=i % 4)
    lock = threading.Lock()
    running_now: dict[object, int] = defaultdict(int)
    overlaps: list[object] = []
    seen: dict[object, list[int]] = defaultdict(list)

    def handle(msg: Message[Any]) -> None:
        lane = msg.partition if ordering == "partition" else (msg.partition, msg.key)
        with lock:
            running_now[lane] += 1
            if running_now[lane] > 1:
                overlaps.append(lane)
        with lock:
            seen[lane].append(msg.offset)
            running_now[lane] -= 1

    with running(spec_for(as_kind(kind, handle), concurrency=16, ordering=ordering), source):
        assert source.wait_for(lambda s: committed_to_the_end(s, [P0, P1, P2, P3]), 30)
    assert overlaps == []
    assert sum(len(offsets) for offsets in seen.values()) == 2000
    for offsets in seen.values():
        assert offsets == sorted(offsets)


def test_the_commit_stops_at_the_first_unfinished_offset(kind: str) -> None:
    source = MemorySource({"t": 1})
    for i in range(100):
        source.broker.append("t", b"%d" % i)
    release = threading.Event()

    def handle(msg: Message[Any]) -> None:
        if msg.offset == 40:
            assert release.wait(10)

    with running(spec_for(as_kind(kind, handle), ordering="none", concurrency=8), source):
        assert source.wait_for(lambda s: s.committed.get(P0) == 40, 10)
        assert all(position <= 40 for commit in source.commits for position in commit.values())
        release.set()
        assert source.wait_for(lambda s: s.committed.get(P0) == 100, 10)


def test_a_revoke_gives_up_unstarted_work_and_the_next_owner_gets_it(kind: str) -> None:
    source = MemorySource({"t": 2})
    for i in range(10):
        source.broker.append("t", b"%d" % i, partition=0)
    entered, release = threading.Event(), threading.Event()
    handled: list[tuple[int, int]] = []

    def handle(msg: Message[Any]) -> None:
        if (msg.partition, msg.offset) == (0, 10) and not release.is_set():
            entered.set()
            assert release.wait(10)
        handled.append((msg.partition, msg.offset))

    # A short revoke_timeout: the revoke gives up on the stuck message and commits up to it.
    with running(spec_for(as_kind(kind, handle)), source, revoke_timeout=0.2):
        assert source.wait_for(lambda s: s.committed.get(P0) == 10, 10)
        for i in range(10, 100):
            source.broker.append("t", b"%d" % i, partition=0)
            source.broker.append("t", b"%d" % i, partition=1)
        assert entered.wait(10)
        source.revoke([P0])
        assert source.wait_for(lambda s: P0 not in s.assigned, 10)
        # 10 was still running and 11-99 were never started: nothing more was committed.
        assert source.committed[P0] == 10
        assert [o for p, o in handled if p == 0] == list(range(10))
        release.set()
        source.assign([P0])  # this member is the next owner: it starts at the commit
        assert source.wait_for(lambda s: committed_to_the_end(s, [P0, P1]), 10)
    on_p0 = [o for p, o in handled if p == 0]
    # Only the message running at the revoke ran twice (the old run finished, unreported).
    assert sorted(on_p0) == sorted([*range(100), 10])
    assert sorted(o for p, o in handled if p == 1) == list(range(90))


def test_lost_partitions_commit_nothing(kind: str) -> None:
    source = MemorySource({"t": 1})
    for i in range(5):
        source.broker.append("t", b"%d" % i)
    entered, release = threading.Event(), threading.Event()

    def handle(msg: Message[Any]) -> None:
        if msg.offset == 5:
            entered.set()
            assert release.wait(10)

    with running(spec_for(as_kind(kind, handle)), source):
        assert source.wait_for(lambda s: s.committed.get(P0) == 5, 10)
        source.broker.append("t", b"5")
        assert entered.wait(10)
        commits = len(source.commits)
        source.lose([P0])
        assert source.wait_for(lambda s: P0 not in s.assigned, 10)
        release.set()
    # Another member may own it already: nothing is committed for it any more.
    assert len(source.commits) == commits


def test_shutdown_finishes_in_flight_work_commits_and_leaves_the_rest(kind: str) -> None:
    source = MemorySource({"t": 1})
    for i in range(50):
        source.broker.append("t", b"%d" % i)
    entered, release = threading.Event(), threading.Event()
    handled: list[int] = []

    def handle(msg: Message[Any]) -> None:
        if msg.offset == 20:
            entered.set()
            assert release.wait(10)
        handled.append(msg.offset)

    with running(spec_for(as_kind(kind, handle)), source) as runtime:
        assert entered.wait(10)
        [state] = runtime.poller.partitions
        runtime.request_stop()
        wait_until(lambda: state.lease.revoked, 10, "shutdown to stop the partition's work")
        release.set()  # the message in flight finishes within shutdown_timeout
    assert source.closed
    assert source.committed[P0] == 21
    assert handled == list(range(21))
    assert runtime.poller.unfinished_at_exit == {}


def test_skipped_failures_move_the_commit_past_them(kind: str) -> None:
    source = MemorySource({"t": 1})
    for i in range(10):
        source.broker.append("t", b"%d" % i)

    def handle(msg: Message[Any]) -> None:
        if msg.offset % 3 == 0:
            raise ValueError("bad row")

    with running(spec_for(as_kind(kind, handle), on_exhausted="skip"), source) as runtime:
        assert source.wait_for(lambda s: s.committed.get(P0) == 10, 10)
        assert runtime.poller.stats.finished == 10

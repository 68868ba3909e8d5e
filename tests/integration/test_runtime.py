"""The runtime against the real broker, in process: ordering, commits, failures, backpressure."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import defaultdict
from typing import Any

import pytest

from kafkaworker import App, Backoff, Message, StartupError
from kafkaworker.handlers import resolve_specs
from kafkaworker.runtime.runner import Runner
from tests.conftest import TopicFactory
from tests.support import (
    committed,
    end_offsets,
    make_settings,
    of_kind,
    produce,
    running,
    wait_until,
)

pytestmark = pytest.mark.kafka


class Tracker:
    """Thread-safe record of what handlers saw, and how many ran at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: list[tuple[int, int, bytes | None]] = []
        self.active: dict[Any, int] = defaultdict(int)
        self.max_active: dict[Any, int] = defaultdict(int)

    def enter(self, *scopes: Any) -> None:
        with self.lock:
            for scope in scopes:
                self.active[scope] += 1
                self.max_active[scope] = max(self.max_active[scope], self.active[scope])

    def leave(self, msg: Message[Any], *scopes: Any) -> None:
        with self.lock:
            for scope in scopes:
                self.active[scope] -= 1
            self.seen.append((msg.partition, msg.offset, msg.key))

    def count(self) -> int:
        with self.lock:
            return len(self.seen)


def test_partition_ordering_runs_one_message_per_partition_in_offset_order(
    kafka_bootstrap: str, new_topic: TopicFactory, kind: str
) -> None:
    topic = new_topic(4)
    total = 2000
    produce(
        kafka_bootstrap,
        topic,
        [b"%d" % i for i in range(total)],
        partitions=[i % 4 for i in range(total)],
    )
    tracker = Tracker()
    app = App(f"g-{topic}")

    @app.handler(topic, concurrency=8, codec="raw")
    @of_kind(kind)
    def handle(msg: Message[bytes]) -> None:
        tracker.enter(msg.partition)
        tracker.leave(msg, msg.partition)

    with running(app, make_settings(kafka_bootstrap)):
        wait_until(lambda: tracker.count() >= total, 60, "every message handled")
        wait_until(
            lambda: (
                committed(kafka_bootstrap, app.name, topic, 4)
                == end_offsets(kafka_bootstrap, topic, 4)
            ),
            30,
            "offsets committed to the end",
        )

    per_partition: dict[int, list[int]] = defaultdict(list)
    for partition, offset, _ in tracker.seen:
        per_partition[partition].append(offset)
    assert {p: offsets for p, offsets in per_partition.items()} == {
        p: list(range(total // 4)) for p in range(4)
    }
    assert all(tracker.max_active[p] == 1 for p in range(4))


def test_key_ordering_keeps_per_key_order_with_parallelism_inside_a_partition(
    kafka_bootstrap: str, new_topic: TopicFactory, kind: str
) -> None:
    topic = new_topic(2)
    total = 600
    keys = [b"k%d" % (i % 30) for i in range(total)]
    produce(kafka_bootstrap, topic, [b"%d" % i for i in range(total)], keys=keys)
    tracker = Tracker()
    app = App(f"g-{topic}")

    @app.handler(topic, concurrency=16, ordering="key", codec="raw")
    @of_kind(kind)
    def handle(msg: Message[bytes]) -> None:
        tracker.enter(("key", msg.partition, msg.key), ("partition", msg.partition))
        time.sleep(0.002)
        tracker.leave(msg, ("key", msg.partition, msg.key), ("partition", msg.partition))

    with running(app, make_settings(kafka_bootstrap)):
        wait_until(lambda: tracker.count() >= total, 60, "every message handled")

    per_key: dict[tuple[int, bytes | None], list[int]] = defaultdict(list)
    for partition, offset, key in tracker.seen:
        per_key[(partition, key)].append(offset)
    assert sum(len(v) for v in per_key.values()) == total
    assert all(offsets == sorted(offsets) for offsets in per_key.values())
    assert all(tracker.max_active[("key", p, k)] == 1 for p, k in per_key)
    # More threads than partitions pay off: one partition runs several keys at once.
    assert max(tracker.max_active[("partition", p)] for p in range(2)) > 1


def test_no_ordering_uses_every_thread(
    kafka_bootstrap: str, new_topic: TopicFactory, kind: str
) -> None:
    topic = new_topic(1)
    produce(kafka_bootstrap, topic, [b"x"] * 64)
    tracker = Tracker()
    all_in = threading.Barrier(8, timeout=20)
    app = App(f"g-{topic}")

    @app.handler(topic, concurrency=8, ordering="none", codec="raw")
    @of_kind(kind)
    def handle(msg: Message[bytes]) -> None:
        tracker.enter("all")
        if msg.offset < 8:
            all_in.wait()  # passes only when 8 threads are in the handler together
        tracker.leave(msg, "all")

    with running(app, make_settings(kafka_bootstrap)):
        wait_until(lambda: tracker.count() >= 64, 60, "every message handled")
    assert tracker.max_active["all"] == 8
    assert sorted(offset for _, offset, _ in tracker.seen) == list(range(64))


def test_a_failing_message_stops_its_partitions_commits_but_not_the_others(
    kafka_bootstrap: str, new_topic: TopicFactory, kind: str
) -> None:
    topic = new_topic(2)
    produce(
        kafka_bootstrap,
        topic,
        [b"%d" % i for i in range(40)],
        partitions=[i % 2 for i in range(40)],
    )
    attempts: dict[int, int] = defaultdict(int)
    handled = Tracker()
    app = App(f"g-{topic}")

    @app.handler(topic, codec="raw", retries=2, backoff=Backoff(initial=0.01, max=0.05))
    @of_kind(kind)
    def handle(msg: Message[bytes]) -> None:
        if msg.partition == 0 and msg.offset == 5:
            attempts[msg.attempt] += 1
            raise RuntimeError("the payment service is down")
        handled.enter()
        handled.leave(msg)

    with running(app, make_settings(kafka_bootstrap)) as runner:
        wait_until(lambda: handled.count() >= 25, 30, "partition 1 and the head of partition 0")
        wait_until(
            lambda: committed(kafka_bootstrap, app.name, topic, 2) == {0: 5, 1: 20},
            30,
            "partition 1 committed to its end, partition 0 up to the failure",
        )
        wait_until(lambda: len(attempts) >= 5, 30, "the failing message retried past retries")
        assert runner.handlers[0].poller.stats.finished == 25
    # Past its retries the message kept being retried (stalled), never skipped.
    assert sorted(attempts)[:5] == [1, 2, 3, 4, 5]
    assert committed(kafka_bootstrap, app.name, topic, 2) == {0: 5, 1: 20}


def test_manual_ack_commits_only_what_was_acknowledged(
    kafka_bootstrap: str, new_topic: TopicFactory, kind: str
) -> None:
    topic = new_topic(1)
    produce(kafka_bootstrap, topic, [b"%d" % i for i in range(10)])
    received: list[Message[bytes]] = []
    app = App(f"g-{topic}")

    @app.handler(topic, codec="raw", ack="manual")
    @of_kind(kind)
    def handle(msg: Message[bytes]) -> None:
        received.append(msg)  # acknowledged later, from another thread

    with running(app, make_settings(kafka_bootstrap)) as runner:
        wait_until(lambda: len(received) == 10, 30, "10 messages handed over")
        # Acked twice each (from two threads at once): still counted once.
        acker = threading.Thread(
            target=lambda: [m.ack() for m in reversed(received) if m.offset != 3]
        )
        racer = threading.Thread(target=lambda: [m.ack() for m in received if m.offset != 3])
        racer.start()
        acker.start()
        acker.join()
        racer.join()
        wait_until(
            lambda: committed(kafka_bootstrap, app.name, topic, 1) == {0: 3},
            30,
            "a commit up to the unacknowledged offset 3",
        )
        time.sleep(0.5)  # several commit intervals: the position must stay at 3
        assert committed(kafka_bootstrap, app.name, topic, 1) == {0: 3}
        received[3].ack()
        received[3].ack()
        wait_until(
            lambda: committed(kafka_bootstrap, app.name, topic, 1) == {0: 10},
            30,
            "the commit to move to the end once offset 3 is acknowledged",
        )
        poller = runner.handlers[0].poller
        wait_until(lambda: poller.stats.finished == 10, 10, "ten finished")
        assert [s.in_flight for s in poller.partitions] == [0]


def test_backpressure_bounds_outstanding_work(
    kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    topic = new_topic(1)
    produce(kafka_bootstrap, topic, [b"x"] * 300)
    outstanding: list[int] = []
    app = App(f"g-{topic}")
    runner_box: list[Runner] = []

    @app.handler(topic, codec="raw", concurrency=2)
    def handle(msg: Message[bytes]) -> None:
        time.sleep(0.002)
        poller = runner_box[0].handlers[0].poller
        outstanding.append(sum(len(s.offsets) for s in poller.partitions))

    settings = make_settings(
        kafka_bootstrap, max_pending_per_partition=20, max_pending=1000, poll_batch=10
    )
    with running(app, settings) as runner:
        runner_box.append(runner)
        wait_until(lambda: len(outstanding) >= 300, 60, "every message handled")
        stats = runner.handlers[0].poller.stats
        assert stats.withheld + stats.pauses > 0
    # At most the limit plus one batch fetched before backpressure took effect.
    assert max(outstanding) <= 20 + 10


def test_a_fast_handler_over_its_limit_is_withheld_from_not_paused(
    kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    """librdkafka drops a paused partition's prefetched records: a handler that drains
    quickly must get them from the local queue, not refetch them after every pause."""
    topic = new_topic(1)
    produce(kafka_bootstrap, topic, [b"x"] * 3000)
    handled = Tracker()
    app = App(f"g-{topic}")

    @app.handler(topic, codec="raw", concurrency=2)
    def handle(msg: Message[bytes]) -> None:
        handled.enter()
        handled.leave(msg)

    settings = make_settings(
        kafka_bootstrap, max_pending_per_partition=100, max_pending=1000, poll_batch=50
    )
    with running(app, settings) as runner:
        wait_until(lambda: handled.count() == 3000, 60, "every message handled")
        stats = runner.handlers[0].poller.stats
        assert stats.withheld > 0
        assert stats.pauses == 0


def test_a_stuck_partition_is_paused_and_the_others_keep_flowing(
    kafka_bootstrap: str, new_topic: TopicFactory, kind: str
) -> None:
    """Withholding records stops every partition, so it must not last: the partition over its
    limit is paused, and the rest flows while its handler is stuck."""
    topic = new_topic(2)
    produce(kafka_bootstrap, topic, [b"x"] * 100, partitions=[0] * 100)
    release = threading.Event()
    handled: list[int] = []
    app = App(f"g-{topic}")

    @app.handler(topic, codec="raw", concurrency=2)
    @of_kind(kind)
    def handle(msg: Message[bytes]) -> None:
        if msg.partition == 0:
            release.wait(60)
        handled.append(msg.partition)

    settings = make_settings(
        kafka_bootstrap, max_pending_per_partition=20, max_pending=1000, poll_batch=10
    )
    with running(app, settings) as runner:
        try:
            poller = runner.handlers[0].poller
            wait_until(lambda: poller.stats.pauses > 0, 30, "the stuck partition paused")
            assert [s.paused for s in poller.partitions if s.partition == 0] == [True]
            # Records of partition 1 now queue behind none of partition 0's.
            produce(kafka_bootstrap, topic, [b"y"] * 200, partitions=[1] * 200)
            wait_until(lambda: handled.count(1) == 200, 60, "partition 1 handled while 0 is stuck")
            assert handled.count(0) == 0
        finally:
            release.set()
        wait_until(lambda: len(handled) == 300, 60, "every message handled")


def test_over_the_handler_budget_no_partition_is_starved(
    kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    """The handler's budget fills in fetch order: the partitions fetched first must not keep
    the others waiting until they drain."""
    topic = new_topic(4)
    produce(
        kafka_bootstrap,
        topic,
        [b"x"] * 400,
        partitions=[i // 100 for i in range(400)],  # 100 per partition, in partition order
    )
    handled: list[int] = []
    app = App(f"g-{topic}")

    @app.handler(topic, codec="raw", concurrency=4)
    def handle(msg: Message[bytes]) -> None:
        time.sleep(0.02)
        handled.append(msg.partition)

    settings = make_settings(
        kafka_bootstrap, max_pending=40, max_pending_per_partition=1000, poll_batch=10
    )
    with running(app, settings):
        wait_until(lambda: len(handled) >= 400, 60, "every message handled")
    starts = {p: handled.index(p) for p in range(4)}
    last_to_start = max(starts.values())
    before = handled[:last_to_start]
    # Every partition was running before any other had done a tenth of its work.
    assert max(before.count(p) for p in range(4)) <= 10, starts


def test_a_handler_slower_than_max_poll_interval_keeps_its_membership(
    kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    topic = new_topic(1)
    produce(kafka_bootstrap, topic, [b"%d" % i for i in range(5)])
    done = Tracker()
    app = App(f"g-{topic}")

    @app.handler(topic, codec="raw", concurrency=1)
    def handle(msg: Message[bytes]) -> None:
        if msg.offset == 0:
            time.sleep(9)  # longer than max.poll.interval.ms below
        done.enter()
        done.leave(msg)

    settings = make_settings(
        kafka_bootstrap,
        kafka={
            "bootstrap_servers": kafka_bootstrap,
            "consumer": {"max.poll.interval.ms": 6000, "session.timeout.ms": 6000},
        },
    )
    with running(app, settings) as runner:
        wait_until(lambda: done.count() == 5, 40, "all five handled")
        wait_until(
            lambda: committed(kafka_bootstrap, app.name, topic, 1) == {0: 5},
            30,
            "offsets committed",
        )
        stats = runner.handlers[0].poller.stats
        assert (stats.assigned, stats.revoked, stats.lost) == (1, 0, 0)
    assert [offset for _, offset, _ in done.seen] == [0, 1, 2, 3, 4]


def test_kip848_consumer_protocol_processes_everything(
    kafka_bootstrap: str, new_topic: TopicFactory, kind: str
) -> None:
    topic = new_topic(3)
    produce(kafka_bootstrap, topic, [b"%d" % i for i in range(300)])
    done = Tracker()
    app = App(f"g-{topic}")

    @app.handler(topic, codec="raw")
    @of_kind(kind)
    def handle(msg: Message[bytes]) -> None:
        done.enter()
        done.leave(msg)

    settings = make_settings(
        kafka_bootstrap, kafka={"bootstrap_servers": kafka_bootstrap, "group_protocol": "consumer"}
    )
    with running(app, settings):
        wait_until(lambda: done.count() >= 300, 60, "every message handled")
        wait_until(
            lambda: (
                committed(kafka_bootstrap, app.name, topic, 3)
                == end_offsets(kafka_bootstrap, topic, 3)
            ),
            30,
            "offsets committed",
        )
    # Every record at least once (a start-up reassignment may legitimately repeat a few).
    assert {(p, o) for p, o, _ in done.seen} == {
        (p, o) for p, n in end_offsets(kafka_bootstrap, topic, 3).items() for o in range(n)
    }


@pytest.mark.parametrize("protocol", ["classic", "consumer", "eager"])
def test_a_partition_that_receives_nothing_has_its_start_committed(
    kafka_bootstrap: str, new_topic: TopicFactory, protocol: str
) -> None:
    """The cause of the KIP-848 test's stall in CI (issue 25): its producer's sticky
    partitioner sometimes left one of three partitions empty, and a partition that never
    received a record had no committed offset at all, so the group's offsets never equalled
    the log ends and `lag` showed '-' for it forever. Records go to partitions 0 and 1 only
    here, so it happens every time."""
    topic = new_topic(3)
    produce(kafka_bootstrap, topic, [b"%d" % i for i in range(40)], partitions=[0, 1] * 20)
    app = App(f"g-{topic}")
    done = Tracker()

    @app.handler(topic, codec="raw")
    def handle(msg: Message[bytes]) -> None:
        done.leave(msg)

    kafka: dict[str, Any] = {"bootstrap_servers": kafka_bootstrap}
    if protocol == "eager":  # the classic protocol with an eager strategy: assign(), not
        kafka["consumer"] = {"partition.assignment.strategy": "range"}  # incremental_assign()
    else:
        kafka["group_protocol"] = protocol
    settings = make_settings(kafka_bootstrap, kafka=kafka)
    with running(app, settings):
        wait_until(lambda: done.count() >= 40, 30, "every message handled")
        wait_until(
            lambda: committed(kafka_bootstrap, app.name, topic, 3) == {0: 20, 1: 20, 2: 0},
            15,
            "the empty partition's start committed beside the others' ends",
        )


def test_a_restart_with_latest_does_not_skip_what_arrived_after_the_first_assignment(
    kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    """auto_offset_reset=latest: records that arrive after a worker's first assignment and
    are not finished when it stops must reach the next worker. Without a committed start
    position the next worker would apply "latest" again and start past them (lost): Spring
    Kafka's assignmentCommitOption closes the same hole."""
    topic = new_topic(1)
    app = App(f"g-{topic}")
    entered, release = threading.Event(), threading.Event()
    done = Tracker()
    first_run = [True]

    @app.handler(topic, codec="raw")
    def handle(msg: Message[bytes]) -> None:
        if first_run[0]:
            entered.set()
            release.wait(30)  # never finishes in the first worker's lifetime
            return
        done.leave(msg)

    settings = make_settings(
        kafka_bootstrap, auto_offset_reset="latest", shutdown_timeout=0.5, log_level="ERROR"
    )
    with running(app, settings) as runner:
        wait_until(lambda: runner.handlers[0].poller.partitions, 30, "the first assignment")
        produce(kafka_bootstrap, topic, [b"%d" % i for i in range(5)])
        assert entered.wait(30)
    first_run[0] = False
    release.set()
    with running(app, settings):
        wait_until(lambda: done.count() >= 5, 30, "the records the first worker left unfinished")
    assert sorted(o for _, o, _ in done.seen) == [0, 1, 2, 3, 4]


def test_a_missing_topic_is_a_clear_startup_error(kafka_bootstrap: str) -> None:
    app = App("g-missing")

    @app.handler("no-such-topic-here")
    def handle(msg: Message[Any]) -> None:
        pass

    runner = Runner(
        app, make_settings(kafka_bootstrap), resolve_specs(app, make_settings(kafka_bootstrap))
    )
    with pytest.raises(StartupError) as error:
        runner.run()
    assert str(error.value) == (
        f"topic 'no-such-topic-here' (handler 'handle') does not exist on {kafka_bootstrap}: "
        "create it (kafkaworker topics create no-such-topic-here --partitions N), "
        "or fix the handler's topics"
    )


def test_async_hooks_and_handlers_share_the_process_event_loop(
    kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    """What an async startup hook creates (a connection pool) belongs to its loop; async
    handlers must run on that loop to use it."""
    topic = new_topic(1)
    produce(kafka_bootstrap, topic, [b"%d" % i for i in range(20)])
    app = App(f"g-{topic}")
    pool: dict[str, Any] = {}
    used: list[bool] = []

    @app.on_startup
    async def open_pool() -> None:
        pool["loop"] = asyncio.get_running_loop()
        pool["lock"] = asyncio.Lock()  # bound to the loop it is first used on

    @app.handler(topic, codec="raw", ordering="none", concurrency=10)
    async def handle(msg: Message[bytes]) -> None:
        async with pool["lock"]:
            used.append(asyncio.get_running_loop() is pool["loop"])

    with running(app, make_settings(kafka_bootstrap)):
        wait_until(lambda: len(used) == 20, 30, "twenty handled")
    assert all(used)
